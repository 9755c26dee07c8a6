// One decoder layer of a step in one foreign call, for a GQA + routed-MoE layer whose every part
// runs on the native engine (the CPU placement of Qwen3-MoE and Mixtral files): RMSNorm, the fused
// q/k/v linear, attention, the output linear and its residual, RMSNorm, the router, the experts and
// their residual, chained here. The parts are the entry points Python calls one by one otherwise
// (moe.cpp, attention.cpp): the results are the same bits; what goes is ~250 us of Python and torch
// per layer between them at decode, more than the attention itself.
#include <stdint.h>
#include <time.h>

#include <vector>

#include "attention.h"
#include "linear.h"
#include "route.h"

extern "C" {

struct MoeArgs;  // moe.cpp
int hymoe_moe_start(void* engine, MoeArgs* args, int num_tokens, int topk, const float* x, const int64_t* ids,
                    const float* weights, float* out, int64_t x_len, int64_t pairs_len, int64_t out_len,
                    int is_async);
int hymoe_linear(void* engine, LinearArgs* args, int num_tokens, const float* x, int64_t x_len, float* out,
                 int64_t out_len);
int hymoe_router(void* engine, LinearArgs* linear, RouteArgs* route, int num_tokens, const float* x, int64_t x_len,
                 float* logits);
int hymoe_gqa_attention(void* engine, const GqaArgs* args);
void hymoe_rms_norm(const float* x, const float* w, float* out, int rows, int n, float eps);
int hymoe_dequant_rows(int fmt, const uint8_t* w, int64_t w_bytes, int64_t num_rows, int n, const int64_t* ids,
                       int num_ids, float* out, int64_t out_len);

// Mirrored by hymoe/experts/native_layer.py (ctypes.Structure): keep the field order.
struct LayerArgs {
    int32_t hidden, q_width, kv_width, topk, num_experts, capacity;  // capacity: rows the buffers hold
    float eps1, eps2;
    const float *norm1, *norm2;  // [H] each
    LinearArgs *qkv, *o, *router;
    RouteArgs* route;
    GqaArgs* attn;  // the layer's heads, norms and cache; the step's fields are copied in per call
    MoeArgs* moe;
    // buffers of `capacity` rows: [H], [q + 2 kv], [q], [H], [E], [K] ids, [K] weights, [H]
    float *h, *qkv_out, *attn_out, *o_out, *logits;
    int64_t* ids;
    float *weights, *moe_out;
    // null, or [5] nanoseconds added per call: q/k/v (norm and linear), attention, o (linear and
    // residual), router (norm and routing), experts (and residual): scripts/profile_decode.py's split
    double* stage_ns;
};

static inline double now_ns() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

// Adds the time since the last mark to stage `i` when the caller asked for the split.
struct StageClock {
    double* ns;
    double last;
    explicit StageClock(double* out) : ns(out), last(out ? now_ns() : 0) {}
    void mark(int i) {
        if (!ns) return;
        double t = now_ns();
        ns[i] += t - last, last = t;
    }
};

// x [rows, H] (rows = the step's B x T) <- the layer applied to it, in place. step: a GqaArgs
// holding the step's fields (rows, tokens, positions, slots, tables, rotation, kv_len and their
// sizes). 0, or an entry point's code (-4: more rows than the buffers hold, or than the step has).
__attribute__((visibility("default"))) int hymoe_layer_step(void* engine, LayerArgs* L, const GqaArgs* step,
                                                            int rows, float* x) {
    if (rows < 1 || rows > L->capacity || (int64_t)step->num_rows * step->tokens != rows) return -4;
    const int H = L->hidden;
    const int64_t width = (int64_t)L->q_width + 2 * L->kv_width, xs = (int64_t)rows * H;
    StageClock clock(L->stage_ns);
    hymoe_rms_norm(x, L->norm1, L->h, rows, H, L->eps1);
    if (int rc = hymoe_linear(engine, L->qkv, rows, L->h, xs, L->qkv_out, rows * width)) return rc;
    clock.mark(0);
    GqaArgs* a = L->attn;
    a->num_rows = step->num_rows, a->tokens = step->tokens, a->kv_len = step->kv_len;
    a->table_width = step->table_width;
    a->cos = step->cos, a->sin = step->sin, a->rope_len = step->rope_len, a->rope_at_position = step->rope_at_position;
    a->table = step->table, a->table_len = step->table_len;
    a->slots = step->slots, a->slots_len = step->slots_len;
    a->positions = step->positions, a->positions_len = step->positions_len;
    a->q_stride = a->k_stride = a->v_stride = width;  // q, k and v side by side in each row
    a->q = L->qkv_out, a->k = L->qkv_out + L->q_width, a->v = L->qkv_out + L->q_width + L->kv_width;
    a->q_len = rows * width, a->k_len = a->q_len - L->q_width, a->v_len = a->k_len - L->kv_width;
    a->out = L->attn_out, a->out_len = (int64_t)rows * L->q_width;
    if (int rc = hymoe_gqa_attention(engine, a)) return rc;
    clock.mark(1);
    if (int rc = hymoe_linear(engine, L->o, rows, L->attn_out, a->out_len, L->o_out, xs)) return rc;
    for (int64_t i = 0; i < xs; i++) x[i] += L->o_out[i];
    clock.mark(2);
    hymoe_rms_norm(x, L->norm2, L->h, rows, H, L->eps2);
    L->route->ids = L->ids, L->route->weights = L->weights;
    if (int rc = hymoe_router(engine, L->router, L->route, rows, L->h, xs, L->logits)) return rc;
    clock.mark(3);
    const int64_t pairs = (int64_t)rows * L->topk;
    if (int rc = hymoe_moe_start(engine, L->moe, rows, L->topk, L->h, L->ids, L->weights, L->moe_out, xs, pairs, xs, 0))
        return rc;
    for (int64_t i = 0; i < xs; i++) x[i] += L->moe_out[i];
    clock.mark(4);
    return 0;
}

// What a stacked step does before and after its layers (all optional). Mirrored by
// hymoe/experts/native_layer.py (ctypes.Structure): keep the field order.
struct StackEnds {
    // null, or the rows' token ids: x is first written with their rows of the embedding table
    // (embed_rows rows of the hidden width in embed_fmt, embed_bytes long), as hymoe_dequant_rows
    const int64_t* ids;
    int32_t embed_fmt;
    int64_t embed_rows, embed_bytes;
    const uint8_t* embed;
    const float* norm;  // null, or the final RMSNorm's weight [H], applied to x in place
    float norm_eps;
    // null, or the output head (after the norm; one token a row): its logits [rows, V] in logits
    // (logits_len floats) and each row's first largest logit's index in best[rows] (the first
    // NaN's, as torch.argmax)
    LinearArgs* head;
    float* logits;
    int64_t logits_len;
    int64_t* best;
};

// Each row's first largest value's index (a NaN counts as the largest), as torch.argmax.
static void argmax_rows(const float* v, int rows, int n, int64_t* best) {
    for (int r = 0; r < rows; r++) {
        const float* l = v + (int64_t)r * n;
        int at = 0;
        for (int i = 1; i < n && l[at] == l[at]; i++)  // stops at a NaN
            if (l[i] > l[at] || l[i] != l[i]) at = i;
        best[r] = at;
    }
}

// Every layer of a step in one foreign call: hymoe_layer_step over layers [0, num_layers) in order,
// x [rows, H] updated in place, with the ends `e` (null: none). Each foreign call from Python costs
// far more than its work at decode, the interpreter's and torch's state cold after the weights
// streamed: the per-layer calls ~15 us each, the final norm ~30 us, and the embedding lookup, the
// head and a greedy pick ~0.3 ms a step together (for 0.12 ms of the head's weights). 0, or the
// embedding's code (-2: an id outside the table), the first failing layer's, or the head's (-4:
// a head without a norm or best, or of another width).
__attribute__((visibility("default"))) int hymoe_layers_step(void* engine, LayerArgs* const* layers, int num_layers,
                                                             const GqaArgs* step, int rows, float* x,
                                                             const StackEnds* e) {
    if (num_layers < 1) return -4;
    const int H = layers[0]->hidden;
    if (e && e->head && (!e->norm || !e->best || e->head->n != H)) return -4;
    if (e && e->ids)
        if (int rc = hymoe_dequant_rows(e->embed_fmt, e->embed, e->embed_bytes, e->embed_rows, H, e->ids, rows, x,
                                        (int64_t)rows * H))
            return rc;
    for (int i = 0; i < num_layers; i++)
        if (int rc = hymoe_layer_step(engine, layers[i], step, rows, x)) return rc;
    if (!e) return 0;
    // in place: each row's sum of squares is taken before the row is written
    if (e->norm) hymoe_rms_norm(x, e->norm, x, rows, H, e->norm_eps);
    if (!e->head) return 0;
    if (int rc = hymoe_linear(engine, e->head, rows, x, (int64_t)rows * H, e->logits, e->logits_len)) return rc;
    argmax_rows(e->logits, rows, e->head->out_stride, e->best);
    return 0;
}

// `steps` greedy decode steps of `rows` rows (one token each) in one call: hymoe_layers_step with
// the ends `e` (ids, norm, head and pick), each next step fed the rows' picks and written one
// position on (its slot from the rows' block tables, which hold every position the steps write).
// picks [steps][rows]. Why: between two steps a generate loop spent ~0.4 ms in Python (the runner's
// inputs, the scheduler, the binding), its state cold after the weights streamed. 0, or -4 (not one
// token a row, no head, no rotation table by position, a position past the tables), or a step's code.
__attribute__((visibility("default"))) int hymoe_layers_decode(void* engine, LayerArgs* const* layers, int num_layers,
                                                               const GqaArgs* step, int rows, float* x,
                                                               const StackEnds* e, int steps, int64_t* picks) {
    if (steps < 1 || num_layers < 1 || !e || !e->ids || !e->head || !picks || step->tokens != 1 ||
        step->num_rows != rows || rows < 1 || !step->rope_at_position || step->positions_len < rows ||
        step->slots_len < rows || layers[0]->attn->block_size < 1)
        return -4;
    const int64_t bs = layers[0]->attn->block_size, width = step->table_width;
    std::vector<int64_t> pos(step->positions, step->positions + rows), slots(step->slots, step->slots + rows),
        ids(e->ids, e->ids + rows);
    GqaArgs st = *step;
    StackEnds ends = *e;
    st.positions = pos.data(), st.slots = slots.data(), ends.ids = ids.data();
    for (int s = 0; s < steps; s++) {
        if (s > 0) {
            for (int b = 0; b < rows; b++) {
                const int64_t j = ++pos[b] / bs;
                if (j >= width || (int64_t)b * width + j >= step->table_len) return -4;
                slots[b] = step->table[(int64_t)b * width + j] * bs + pos[b] % bs;
                ids[b] = picks[(int64_t)(s - 1) * rows + b];
            }
            st.kv_len++;  // every row one position on
        }
        if (int rc = hymoe_layers_step(engine, layers, num_layers, &st, rows, x, &ends)) return rc;
        for (int b = 0; b < rows; b++) picks[(int64_t)s * rows + b] = e->best[b];
    }
    return 0;
}

}  // extern "C"
