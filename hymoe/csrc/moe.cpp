// The fused MoE forward behind hymoe's native ExpertBackend, and its C API (called through ctypes,
// which releases the GIL). One call computes, for all tokens,
//   out[t] = sum_k w[t,k] * down_e(silu(gate_e x_t) * up_e x_t),  e = ids[t,k]
// in four phases on the pool: quantise x; gate/up rows per (expert, row chunk); silu*up and
// quantise; down rows per row chunk of H across all experts (each chunk owns its slice of out,
// so there are no races and the sum order is fixed whatever the thread count). At one token with 4
// or more experts a thread, one phase of whole experts instead (Job::run_one_token), the same sum.
#include <math.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "attention.h"
#include "dispatch.h"
#include "linear.h"
#include "numa.h"
#include "pool.h"
#include "route.h"

namespace {

size_t row_bytes(int fmt, int n) {
    switch (fmt) {
        case F32: return (size_t)n * 4;
        case F16: case BF16: return (size_t)n * 2;
        case Q8_0: return (size_t)n / 32 * sizeof(BlockQ8_0);
        case Q4_0: return (size_t)n / 32 * sizeof(BlockQ4_0);
        case Q4_K: case Q4_K_G4: return (size_t)n / 256 * sizeof(BlockQ4_K);
        case Q5_K: return (size_t)n / 256 * sizeof(BlockQ5_K);
        case Q6_K: return (size_t)n / 256 * sizeof(BlockQ6_K);
        case IQ1_S: return (size_t)n / 256 * sizeof(BlockIQ1_S);
        case TQ2_0: return (size_t)n / 256 * sizeof(BlockTQ2_0);
        case TQ1_0: return (size_t)n / 256 * sizeof(BlockTQ1_0);
        case Q4_1: return (size_t)n / 32 * sizeof(BlockQ4_1);
        case Q5_0: return (size_t)n / 32 * sizeof(BlockQ5_0);
        case Q5_1: return (size_t)n / 32 * sizeof(BlockQ5_1);
        case IQ4_NL: return (size_t)n / 32 * sizeof(BlockIQ4_NL);
        case Q2_K: return (size_t)n / 256 * sizeof(BlockQ2_K);
        case Q3_K: return (size_t)n / 256 * sizeof(BlockQ3_K);
        case IQ4_XS: return (size_t)n / 256 * sizeof(BlockIQ4_XS);
        case IQ2_XXS: return (size_t)n / 256 * sizeof(BlockIQ2_XXS);
        case IQ2_XS: return (size_t)n / 256 * sizeof(BlockIQ2_XS);
        case IQ2_S: return (size_t)n / 256 * sizeof(BlockIQ2_S);
        case IQ3_XXS: return (size_t)n / 256 * sizeof(BlockIQ3_XXS);
        case IQ3_S: return (size_t)n / 256 * sizeof(BlockIQ3_S);
        case IQ1_M: return (size_t)n / 256 * sizeof(BlockIQ1_M);
        default: return 0;
    }
}
int block_size(int fmt) {
    switch (fmt) {
        case F32: case F16: case BF16: return 1;
        case Q8_0: case Q4_0: case Q4_1: case Q5_0: case Q5_1: case IQ4_NL: return 32;
        default: return 256;
    }
}

}  // namespace

size_t fmt_row_bytes(int fmt, int n) { return row_bytes(fmt, n); }
int fmt_block_size(int fmt) { return block_size(fmt); }

RangeHint& range_hint() {
    static thread_local RangeHint hint;
    return hint;
}

extern "C" {

// Mirrored by hymoe/experts/native.py (ctypes.Structure): keep the field order.
struct MoeArgs {
    int32_t num_tokens, hidden, inter, topk, num_experts;
    int32_t fmt_gate, fmt_up, fmt_down;
    const float* x;         // [T, H]
    const int64_t* ids;     // [T, K]
    const float* weights;   // [T, K]
    float* out;             // [T, H]
    const uint8_t* gate;    // [E] x [I rows of H]
    const uint8_t* up;      // [E] x [I rows of H]
    const uint8_t* down;    // [E] x [H rows of I]
    int64_t gate_stride, up_stride, down_stride;  // bytes per expert
    int64_t gate_bytes, up_bytes, down_bytes;     // what the caller gave: every expert must lie inside
};

}  // extern "C"

namespace {

const int kTokenBlock = 64;  // tokens per kernel call: their activations stay in L2 while rows stream
// Rows per work unit at most when an expert has several token blocks: small units keep their rows
// in L2 between blocks (with one block, Tuning::gate_rows and down_rows).
const int kRowsSmall = 64;

struct Job {
    MoeArgs a;
    const KernelTable* kt;
    // routing, grouped by expert
    std::vector<int> experts, pair_start, pair_token;  // pair p belongs to token pair_token[p]
    std::vector<float> pair_weight;
    // activations
    std::vector<uint8_t> xq, hq;              // quantised x per token, quantised h per pair
    std::vector<float> xr;                    // x rounded to bf16 per token (BF16 gate or up)
    std::vector<const void*> x_ptr, h_ptr;    // per pair: what the kernels read
    std::vector<float> g, u;                  // [pairs, I]
    std::vector<float> d;                     // [experts, H]: each expert's down rows (run_one_token)
    std::vector<std::vector<float>> scratch;  // per thread

    // Rows per work unit for enough units to share: about 16 per thread over `parts` independent
    // matrices, 4 to 64 rows (a multiple of 4, the kernels' rows per pass). Callers may go larger.
    int rows_per_unit(int rows, int parts, int threads) const {
        int r = rows / std::max(1, 16 * threads / std::max(1, parts));
        r = std::max(4, std::min(64, r));
        return (r + 3) / 4 * 4;
    }

    // h = silu(g) * u for pair p (g[p] overwritten), as the down projection's kernels read it
    void make_h(int p) {
        const int I = a.inter;
        float* gp = g.data() + (size_t)p * I;
        kt->silu_mul(gp, u.data() + (size_t)p * I, I);
        if (a.fmt_down == BF16) round_to_bf16(gp, gp, I);
        if (fmt_is_float(a.fmt_down)) {
            h_ptr[p] = gp;
        } else {
            const size_t hb = kt->act_bytes(I);
            kt->quantize(gp, I, hq.data() + p * hb);
            h_ptr[p] = hq.data() + p * hb;
        }
    }

    // o[0 .. n) += w * s[0 .. n): one expert's down rows into the output, in both paths (the same sum)
    static void add_scaled(float* o, float w, const float* s, int n) {
        for (int r = 0; r < n; r++) o[r] += w * s[r];
    }

    // One token (decode), at least 4 experts a thread: a unit is one expert whole, its gate and up
    // rows, h, and its down rows into a row of d of its own, so no thread waits for the other between
    // the projections (phases 0 to 3 cost three barriers a layer, where a thread done early leaves its
    // share of the bus unused). The experts' rows are added into out in their order after the phase:
    // the phased path's sum, bit for bit (its down units start at multiples of 4 rows, as here at 0).
    void run_one_token(Pool& pool, const void* const* gate_x, const void* const* up_x) {
        const int H = a.hidden, I = a.inter, ne = (int)experts.size();
        const size_t gate_rb = row_bytes(a.fmt_gate, H), up_rb = row_bytes(a.fmt_up, H);
        const size_t down_rb = row_bytes(a.fmt_down, I);
        h_ptr.resize(ne);
        d.resize((size_t)ne * H);
        auto gate_of = [&](int ei) { return ei < ne ? a.gate + experts[ei] * a.gate_stride : nullptr; };
        pool.parallel_for(ne, [&](int ei, int) {
            const int e = experts[ei], p = pair_start[ei];  // each expert's one pair
            const uint8_t* uw = a.up + e * a.up_stride;
            const uint8_t* dw = a.down + e * a.down_stride;
            RangeHint& hint = range_hint();
            hint.next = uw;
            run_rows(*kt, a.fmt_gate, gate_of(ei), gate_rb, I, gate_x + p, 1, H, g.data() + (size_t)p * I, I);
            hint.next = dw;
            run_rows(*kt, a.fmt_up, uw, up_rb, I, up_x + p, 1, H, u.data() + (size_t)p * I, I);
            make_h(p);
            hint.next = gate_of(pool.next_unit());
            run_rows(*kt, a.fmt_down, dw, down_rb, H, &h_ptr[p], 1, I, d.data() + (size_t)ei * H, H);
        }, nullptr, g_tuning.moe_by_thread != 0);
        for (int ei = 0; ei < ne; ei++) add_scaled(a.out, pair_weight[pair_start[ei]], d.data() + (size_t)ei * H, H);
    }

    void run(Pool& pool) {
        const int T = a.num_tokens, H = a.hidden, I = a.inter, K = a.topk;
        const int P = T * K;
        const bool x_quant = !fmt_is_float(a.fmt_gate) || !fmt_is_float(a.fmt_up);
        const bool x_round = a.fmt_gate == BF16 || a.fmt_up == BF16;
        const bool h_float = fmt_is_float(a.fmt_down);
        const size_t xb = kt->act_bytes(H), hb = kt->act_bytes(I);
        if (x_quant) xq.resize((size_t)T * xb);
        if (x_round) xr.resize((size_t)T * H);
        if (!h_float) hq.resize((size_t)P * hb);
        g.resize((size_t)P * I);
        u.resize((size_t)P * I);
        scratch.resize(pool.size());

        // phase 0: zero out, quantise each token once (shared by all its experts)
        auto prepare = [&](int t, int) {
            memset(a.out + (size_t)t * H, 0, (size_t)H * 4);
            if (x_quant) kt->quantize(a.x + (size_t)t * H, H, xq.data() + t * xb);
            if (x_round) round_to_bf16(a.x + (size_t)t * H, xr.data() + (size_t)t * H, H);
        };
        // one token whose k experts are distinct (a caller may name one twice: then the phases)
        const bool is_one_phase = T == 1 && g_tuning.moe_one_phase && pool.nodes() == 1 &&
                                  (int)experts.size() == P && P >= 4 * pool.size();
        if (is_one_phase) prepare(0, 0);
        else pool.parallel_for(T, prepare);
        // per pair and matrix: x itself (F32, F16), x in bf16 (BF16) or the quantised row
        std::vector<const void*> xf_ptr(P), xr_ptr(P), xq_ptr(P);
        for (int p = 0; p < P; p++) {
            int t = pair_token[p];
            xf_ptr[p] = a.x + (size_t)t * H;
            xr_ptr[p] = x_round ? (const void*)(xr.data() + (size_t)t * H) : nullptr;
            xq_ptr[p] = x_quant ? (const void*)(xq.data() + t * xb) : nullptr;
        }
        auto x_for = [&](int fmt) { return fmt == BF16 ? xr_ptr.data() : fmt_is_float(fmt) ? xf_ptr.data() : xq_ptr.data(); };
        const void* const* gate_x = x_for(a.fmt_gate);
        const void* const* up_x = x_for(a.fmt_up);
        if (is_one_phase) return run_one_token(pool, gate_x, up_x);

        // Units by node where there are several (NodeChunks), else one contiguous range a thread
        // (Pool::parallel_for's by_thread, Tuning::moe_by_thread)
        auto by_node = [&](const NodeChunks& nc) { return pool.nodes() > 1 ? nc.first_unit.data() : nullptr; };
        // phase 1: gate and up rows, unit = (active expert, chunk of I rows)
        const int ne = (int)experts.size();
        int max_np = 0;
        for (int ei = 0; ei < ne; ei++) max_np = std::max(max_np, pair_start[ei + 1] - pair_start[ei]);
        const bool is_blocked = max_np > kTokenBlock;
        const int most1 = is_blocked ? kRowsSmall : g_tuning.gate_rows;
        const int r1 = std::max(rows_per_unit(I, ne, pool.size()), std::min(most1, I * ne / (4 * pool.size()) / 4 * 4));
        const int chunks1 = (I + r1 - 1) / r1;
        const size_t gate_rb = row_bytes(a.fmt_gate, H), up_rb = row_bytes(a.fmt_up, H);
        // NUMA (pool.nodes() > 1): node k takes the chunks that start in its share of each expert's
        // rows (numa.h), units of node k before node k + 1's
        const NodeChunks nc1(pool.nodes(), I, r1, ne);
        // Each kernel call names the rows its thread reads next (RangeHint in common.h), so its
        // prefetches run on into them. At a unit's end that is the unit the next claim would get:
        // a guess, as another thread may claim it first (and then finds those lines in this
        // core's L2 or L3, not lost). At decode each hand-over is worth a few points of bandwidth
        // (qwen3 shape, batch 1: 4-8 within a unit, 2-9 more across units).
        auto unit_gate = [&](int unit) -> const uint8_t* {  // the first rows a phase 1 unit reads
            if (unit >= ne * chunks1) return nullptr;
            int ei, chunk;
            nc1.locate(unit, &ei, &chunk);
            return a.gate + experts[ei] * a.gate_stride + chunk * r1 * gate_rb;
        };
        pool.parallel_for(ne * chunks1, [&](int unit, int) {
            int ei, chunk;
            nc1.locate(unit, &ei, &chunk);
            int r0 = chunk * r1, nr = std::min(r1, I - r0);
            int e = experts[ei], p0 = pair_start[ei], np = pair_start[ei + 1] - p0;
            const uint8_t* gw = a.gate + e * a.gate_stride + r0 * gate_rb;
            const uint8_t* uw = a.up + e * a.up_stride + r0 * up_rb;
            const void* const* gx = gate_x + p0;
            const void* const* ux = up_x + p0;
            RangeHint& hint = range_hint();
            for (int tb = 0; tb < np; tb += kTokenBlock) {
                int nt = std::min(kTokenBlock, np - tb);
                hint.next = uw;
                run_rows(*kt, a.fmt_gate, gw, gate_rb, nr, gx + tb, nt, H, g.data() + (size_t)(p0 + tb) * I + r0, I);
                hint.next = tb + kTokenBlock < np ? gw : unit_gate(pool.next_unit());
                run_rows(*kt, a.fmt_up, uw, up_rb, nr, ux + tb, nt, H, u.data() + (size_t)(p0 + tb) * I + r0, I);
            }
        }, by_node(nc1), g_tuning.moe_by_thread != 0);

        // phase 2: h = silu(g) * u, quantised for the down projection
        h_ptr.resize(P);
        pool.parallel_for(P, [&](int p, int) { make_h(p); });

        // phase 3: down rows, unit = chunk of H rows across all experts; weighted sum into out
        const int most3 = is_blocked ? kRowsSmall : g_tuning.down_rows;
        const int r3 = std::max(rows_per_unit(H, 1, pool.size()), std::min(most3, H / (4 * pool.size()) / 4 * 4));
        const int chunks3 = (H + r3 - 1) / r3;
        const size_t down_rb = row_bytes(a.fmt_down, I);
        auto unit_down = [&](int unit) -> const uint8_t* {  // the first rows a phase 3 unit reads
            if (unit >= chunks3) return nullptr;
            return a.down + experts[0] * a.down_stride + unit * r3 * down_rb;
        };
        const NodeChunks nc3(pool.nodes(), H, r3, 1);
        pool.parallel_for(chunks3, [&](int unit, int thread) {
            int r0 = unit * r3, nr = std::min(r3, H - r0);
            std::vector<float>& tmp = scratch[thread];
            tmp.resize((size_t)kTokenBlock * r3);
            RangeHint& hint = range_hint();
            for (int ei = 0; ei < ne; ei++) {
                int e = experts[ei], p0 = pair_start[ei], np = pair_start[ei + 1] - p0;
                const uint8_t* dw = a.down + e * a.down_stride + r0 * down_rb;
                const uint8_t* next_dw = ei + 1 < ne ? a.down + experts[ei + 1] * a.down_stride + r0 * down_rb
                                         : unit_down(pool.next_unit());
                for (int tb = 0; tb < np; tb += kTokenBlock) {
                    int nt = std::min(kTokenBlock, np - tb);
                    hint.next = tb + kTokenBlock < np ? dw : next_dw;
                    run_rows(*kt, a.fmt_down, dw, down_rb, nr, &h_ptr[p0 + tb], nt, I, tmp.data(), r3);
                    for (int j = 0; j < nt; j++) {
                        int p = p0 + tb + j;
                        add_scaled(a.out + (size_t)pair_token[p] * H + r0, pair_weight[p], tmp.data() + (size_t)j * r3, nr);
                    }
                }
            }
        }, by_node(nc3), g_tuning.moe_by_thread != 0);
    }
};

struct Engine {
    Pool pool;
    Job job;
    // The thread inside an entry point now, and the one whose job was submitted last: the job, the
    // scratch buffers and the pool serve one caller at a time (see Claim).
    std::atomic<std::thread::id> user{std::thread::id()};
    std::thread::id job_owner;
    LinearScratch linear;
    std::vector<float> attention;  // an attention call's chunk outputs and their maxima and sums
    // seconds spent inside MoE jobs since creation: the CPU side's busy time, which the end-to-end
    // bench sets against wall time (written by the job's own thread, read after sync)
    std::atomic<double> busy_s{0};
    // nodes > 1: NUMA nodes (numa.h), this machine's own with is_real (the pool's groups pinned to
    // their CPUs), or virtual ones (the same scheduling over this machine's cores)
    Engine(int threads, int nodes, bool is_real) : pool(threads, nodes, is_real ? node_cpu_lists() : NodeCpus()) {}
    using NodeCpus = std::vector<std::vector<int>>;
    static NodeCpus node_cpu_lists() {
        NodeCpus lists;
        for (const NumaNode& n : numa_nodes()) lists.push_back(n.cpus);
        return lists;
    }
    void run_timed() {
        auto t0 = std::chrono::steady_clock::now();
        job.run(pool);
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        busy_s.store(busy_s.load() + dt);
    }
};

// Claims the engine for the calling thread during one entry point. Refused (ok() false) while
// another thread is inside one, or while another thread's job still runs: two threads sharing
// an engine would overwrite each other's job and buffers (a hang or a crash), so the second is
// told, and the caller serializes (hymoe's runners hold the model's lock for a forward pass).
class Claim {
  public:
    explicit Claim(Engine* e) : e_(e) {
        std::thread::id none, me = std::this_thread::get_id();
        ok_ = e->user.compare_exchange_strong(none, me);
        if (ok_ && e->job_owner != me && !e->pool.is_done()) {
            e->user.store(std::thread::id());
            ok_ = false;
        }
    }
    ~Claim() {
        if (ok_) e_->user.store(std::thread::id());
    }
    bool ok() const { return ok_; }

  private:
    Engine* e_;
    bool ok_;
};

const int kBusy = -5;  // another thread holds the engine
const int kSmall = -4;  // a buffer smaller than its sizes, or a size out of range

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int64_t hymoe_row_bytes(int fmt, int n) {
    return n % block_size(fmt) ? -1 : (int64_t)row_bytes(fmt, n);
}

__attribute__((visibility("default"))) void* hymoe_engine_create(int threads) { return new Engine(threads, 1, false); }
// An engine over NUMA nodes: this machine's first `nodes` nodes (is_real) or virtual ones; null when
// is_real and the machine has fewer nodes.
__attribute__((visibility("default"))) void* hymoe_engine_create_numa(int threads, int nodes, int is_real) {
    if (nodes < 1 || (is_real && hymoe_numa_nodes() < nodes)) return nullptr;
    return new Engine(threads, nodes, is_real != 0);
}
__attribute__((visibility("default"))) int hymoe_engine_nodes(void* e) { return ((Engine*)e)->pool.nodes(); }
__attribute__((visibility("default"))) void hymoe_engine_destroy(void* e) { delete (Engine*)e; }
__attribute__((visibility("default"))) int hymoe_engine_threads(void* e) { return ((Engine*)e)->pool.size(); }
__attribute__((visibility("default"))) double hymoe_engine_busy_seconds(void* e) { return ((Engine*)e)->busy_s.load(); }

// Whether each expert's rows lie inside the tensor the caller gave (n values per row), each expert's
// matrix whole groups where its layout has them (Q4_K_G4).
static bool experts_inside(const MoeArgs& a, int fmt, const uint8_t* w, int rows, int n, int64_t stride, int64_t bytes) {
    return stride >= (int64_t)rows * (int64_t)row_bytes(fmt, n) && stride <= bytes / a.num_experts &&
           whole_groups(fmt, w, (int64_t)rows * (int64_t)row_bytes(fmt, n)) && whole_groups(fmt, w, stride);
}

// 0, or why the arguments cannot be computed: -1 a format without kernels, -2 rows that do not
// split into blocks, -3 an expert id out of range, -4 (kSmall) a buffer smaller than its sizes.
// x and out hold x_len and out_len floats, ids and weights pairs_len values each.
static int submit_error(const MoeArgs& a, int64_t x_len, int64_t pairs_len, int64_t out_len) {
    for (int f : {a.fmt_gate, a.fmt_up, a.fmt_down})
        if (!has_format(kernels(), f)) return -1;
    if (a.num_tokens < 0 || a.topk < 1 || a.topk > 1024 || a.hidden < 1 || a.inter < 1 || a.num_experts < 1)
        return kSmall;
    const int64_t T = a.num_tokens;
    if (T * a.hidden > x_len || T * a.topk > pairs_len || T * a.hidden > out_len) return kSmall;
    if (T && (!a.x || !a.ids || !a.weights || !a.out)) return kSmall;
    if (!experts_inside(a, a.fmt_gate, a.gate, a.inter, a.hidden, a.gate_stride, a.gate_bytes) ||
        !experts_inside(a, a.fmt_up, a.up, a.inter, a.hidden, a.up_stride, a.up_bytes) ||
        !experts_inside(a, a.fmt_down, a.down, a.hidden, a.inter, a.down_stride, a.down_bytes))
        return kSmall;
    if (a.hidden % block_size(a.fmt_gate) || a.hidden % block_size(a.fmt_up) || a.inter % block_size(a.fmt_down))
        return -2;
    // activations are quantized in blocks of 32 for the quantized formats
    if ((a.hidden % 32 && !(fmt_is_float(a.fmt_gate) && fmt_is_float(a.fmt_up))) ||
        (a.inter % 32 && !fmt_is_float(a.fmt_down)))
        return -2;
    // id -1: no expert here (a GPU-resident expert computes that pair elsewhere)
    for (int p = 0; p < a.num_tokens * a.topk; p++)
        if (a.ids[p] < -1 || a.ids[p] >= a.num_experts) return -3;
    return 0;
}

// Wakes the engine's sleeping threads ahead of a submit (the caller is about to prepare one), so
// their wake-up latency passes meanwhile instead of at the start of the job's first phase.
__attribute__((visibility("default"))) void hymoe_engine_wake(void* e) { ((Engine*)e)->pool.wake(); }

// Validates, groups tokens by expert, and starts the job: on the pool's driver thread, returning at
// once (is_async: the caller drives a GPU meanwhile), or in the calling thread, which then works
// as the pool's first thread and saves two thread wake-ups per layer (CPU-only). 0 = started.
static int moe_submit(Engine* eng, const MoeArgs* args, int64_t x_len, int64_t pairs_len, int64_t out_len,
                      int is_async) {
    eng->pool.sync();  // the previous job owns the buffers until it is done
    const MoeArgs& a = *args;
    const int bad = submit_error(a, x_len, pairs_len, out_len);
    if (bad) {
        eng->pool.cancel_wake();
        return bad;
    }
    eng->pool.wake();  // cheap when hymoe_engine_wake already woke them (no sleeper to signal)
    const int P = a.num_tokens * a.topk;
    Job& job = eng->job;
    job.a = a;
    job.kt = &kernels();
    // counting sort of (token, k) pairs by expert; experts in ascending order
    std::vector<int> count(a.num_experts + 1, 0);
    for (int p = 0; p < P; p++)
        if (a.ids[p] >= 0) count[a.ids[p] + 1]++;
    job.experts.clear();
    job.pair_start.assign(1, 0);
    for (int e = 0; e < a.num_experts; e++) {
        if (count[e + 1]) {
            job.experts.push_back(e);
            job.pair_start.push_back(job.pair_start.back() + count[e + 1]);
        }
        count[e + 1] += count[e];
    }
    job.pair_token.resize(P);
    job.pair_weight.resize(P);
    for (int p = 0; p < P; p++) {
        if (a.ids[p] < 0) continue;
        int slot = count[a.ids[p]]++;
        job.pair_token[slot] = p / a.topk;
        job.pair_weight[slot] = a.weights[p];
    }
    eng->job_owner = std::this_thread::get_id();
    if (is_async)
        eng->pool.submit([eng] { eng->run_timed(); });
    else
        eng->pool.run([eng] { eng->run_timed(); });
    return 0;
}

// The entry point: the per-layer fields stay in *args between calls, the per-call ones come as
// arguments (one foreign call from Python instead of six field stores and a call: ~11 us when the
// layer before has flushed the caches). x_len, pairs_len, out_len: the floats in x and out, the
// values in ids and weights (each), which the sizes must fit.
__attribute__((visibility("default"))) int hymoe_moe_start(void* engine, MoeArgs* args, int num_tokens, int topk,
                                                           const float* x, const int64_t* ids,
                                                           const float* weights, float* out, int64_t x_len,
                                                           int64_t pairs_len, int64_t out_len, int is_async) {
    Engine* eng = (Engine*)engine;
    Claim claim(eng);
    if (!claim.ok()) return kBusy;
    args->num_tokens = num_tokens;
    args->topk = topk;
    args->x = x;
    args->ids = ids;
    args->weights = weights;
    args->out = out;
    return moe_submit(eng, args, x_len, pairs_len, out_len, is_async);
}

__attribute__((visibility("default"))) void hymoe_moe_sync(void* engine) { ((Engine*)engine)->pool.sync(); }
__attribute__((visibility("default"))) int hymoe_moe_is_done(void* engine) { return ((Engine*)engine)->pool.is_done(); }

// Streaming read of buf on every pool thread: the machine's read bandwidth in GB/s, the bound that
// decode speed is measured against.
__attribute__((visibility("default"))) double hymoe_read_gbps(void* engine, const uint8_t* buf, int64_t bytes,
                                                              int reps) {
    Engine* eng = (Engine*)engine;
    Claim claim(eng);
    if (!claim.ok() || bytes < 0 || reps < 1) return -1;
    const int64_t chunk = 1 << 20, num_chunks = bytes / chunk;
    std::vector<uint64_t> sink(eng->pool.size() * 8, 0);
    double seconds = 0;
    eng->pool.submit([&] {
        auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < reps; r++) {
            eng->pool.parallel_for((int)num_chunks, [&](int c, int thread) {
                sink[thread * 8] ^= kernels().read(buf + (int64_t)c * chunk, chunk);
            });
        }
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
    eng->pool.sync();
    volatile uint64_t keep = 0;
    for (uint64_t v : sink) keep ^= v;
    (void)keep;
    return (double)num_chunks * chunk * reps / seconds / 1e9;
}

static int linear_call(Engine* eng, LinearArgs* args, int num_tokens, const float* x, int64_t x_len, float* out,
                       int64_t out_len) {
    args->num_tokens = num_tokens;
    args->x = x;
    args->out = out;
    const KernelTable& kt = kernels();
    if (int bad = linear_check(*args, kt, x_len, out_len)) return bad;
    eng->pool.wake();
    eng->pool.run([&] { linear_run(*args, kt, eng->pool, eng->linear); });
    return 0;
}

// A dense linear layer (or up to kMaxParts sharing an input) in the calling thread, the pool's
// threads helping, after any job in flight. The per-layer fields stay in *args between calls; x
// and out hold x_len and out_len floats. 0, or -1 a format without kernels, -2 rows that do not
// split into blocks, -4 a buffer smaller than its sizes, -5 another thread holds the engine.
__attribute__((visibility("default"))) int hymoe_linear(void* engine, LinearArgs* args, int num_tokens,
                                                        const float* x, int64_t x_len, float* out,
                                                        int64_t out_len) {
    Claim claim((Engine*)engine);
    if (!claim.ok()) return kBusy;
    return linear_call((Engine*)engine, args, num_tokens, x, x_len, out, out_len);
}

// One matrix per head against each head's own input (HeadLinearArgs, linear.h), in the calling
// thread with the pool's threads. 0, or as hymoe_linear.
__attribute__((visibility("default"))) int hymoe_head_linear(void* engine, HeadLinearArgs* args) {
    Claim claim((Engine*)engine);
    if (!claim.ok()) return kBusy;
    Engine* eng = (Engine*)engine;
    const KernelTable& kt = kernels();
    if (int bad = head_linear_check(*args, kt)) return bad;
    eng->pool.wake();
    eng->pool.run([&] { head_linear_run(*args, kt, eng->pool, eng->linear); });
    return 0;
}

// A router: its logits by the linear job (float32 weights), then each token's top-k (route.cpp),
// in one foreign call; logits hold num_tokens x the linear's rows. 0, or the linear's or the
// routing's error.
__attribute__((visibility("default"))) int hymoe_router(void* engine, LinearArgs* linear, RouteArgs* route,
                                                        int num_tokens, const float* x, int64_t x_len,
                                                        float* logits) {
    Claim claim((Engine*)engine);
    if (!claim.ok()) return kBusy;
    if (route->num_experts != linear->out_stride) return kSmall;
    const int64_t logits_len = (int64_t)num_tokens * linear->out_stride;
    if (int bad = linear_call((Engine*)engine, linear, num_tokens, x, x_len, logits, logits_len)) return bad;
    route->num_tokens = num_tokens;
    route->logits = logits;
    return route_tokens(route);
}

// Grouped-query attention (attention.cpp) in the calling thread, the pool's threads
// helping. 0, or -1 bad sizes, -2 a slot or position outside the cache, -5 another thread holds
// the engine.
__attribute__((visibility("default"))) int hymoe_gqa_attention(void* engine, const GqaArgs* args) {
    Engine* eng = (Engine*)engine;
    Claim claim(eng);
    if (!claim.ok()) return kBusy;
    if (int bad = gqa_check(*args)) return bad;
    eng->pool.wake();
    eng->pool.run([&] { gqa_run(*args, kernels(), eng->pool, eng->attention); });
    return 0;
}

// Attention alone (gqa_run's is_prepared): queries given ready, the cache already written; the
// caller reads each head's first outputs (MLA: the latent's R of R + Dr). As hymoe_gqa_attention.
__attribute__((visibility("default"))) int hymoe_gqa_attend(void* engine, const GqaArgs* args) {
    Engine* eng = (Engine*)engine;
    Claim claim(eng);
    if (!claim.ok()) return kBusy;
    if (int bad = gqa_check(*args, true)) return bad;
    eng->pool.wake();
    eng->pool.run([&] { gqa_run(*args, kernels(), eng->pool, eng->attention, true); });
    return 0;
}

// Whether the pool's helpers keep spinning for a while after a job in the calling thread (on when
// the dense layers run on the pool too: the next job follows within microseconds, and a sleeping
// helper takes tens of them to wake), or sleep at once (the dense part runs elsewhere, in torch).
__attribute__((visibility("default"))) void hymoe_engine_linger(void* engine, int on) {
    ((Engine*)engine)->pool.set_linger(on != 0);
}

// The sum of x[i]^2 over n values in 8 lanes, which the compiler vectorizes: one chain of dependent
// adds takes 4 cycles a value
static inline float sum_squares(const float* x, int n) {
    float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) part[j] += x[i + j] * x[i + j];
    float ss = 0.f;
    for (; i < n; i++) ss += x[i] * x[i];
    for (int j = 0; j < 8; j++) ss += part[j];
    return ss;
}

// RMSNorm of rows of n floats in the calling thread: out = x / sqrt(mean(x^2) + eps) * w, the
// reference's order (normalise, then scale); out may be x. A decode step's norms take ~1 us here,
// ~30 in torch; attention.cpp's q/k norms (one row a head) call it too.
__attribute__((visibility("default"))) void hymoe_rms_norm(const float* x, const float* w, float* out, int rows,
                                                           int n, float eps) {
    for (int r = 0; r < rows; r++) {
        const float* xr = x + (size_t)r * n;
        float* o = out + (size_t)r * n;
        const float scale = 1.f / sqrtf(sum_squares(xr, n) / n + eps);
        for (int i = 0; i < n; i++) o[i] = xr[i] * scale * w[i];
    }
}

// The kernels themselves, for tests: out[t, r] for rows of one matrix against activations x[t];
// w, x and out hold w_bytes, x_len and out_len. 0, or -1 a format or width without kernels, -4 a
// buffer smaller than its sizes.
__attribute__((visibility("default"))) int hymoe_rows(int fmt, const uint8_t* w, int64_t w_bytes, int nrows, int n,
                                                      const float* x, int64_t x_len, int ntok, float* out,
                                                      int64_t out_len) {
    const KernelTable& kt = kernels();
    if (!has_format(kt, fmt) || n < 1 || n % block_size(fmt) || n % 32) return -1;
    if (nrows < 0 || ntok < 0 || (int64_t)nrows * (int64_t)row_bytes(fmt, n) > w_bytes ||
        !whole_groups(fmt, w, (int64_t)nrows * (int64_t)row_bytes(fmt, n)) ||
        (int64_t)ntok * n > x_len || (int64_t)ntok * nrows > out_len)
        return kSmall;
    range_hint() = RangeHint();  // no MoE job's hint carries over
    std::vector<uint8_t> q(fmt_is_float(fmt) ? 0 : ntok * kt.act_bytes(n));
    std::vector<float> r(fmt == BF16 ? (size_t)ntok * n : 0);
    std::vector<const void*> ptr(ntok);
    for (int t = 0; t < ntok; t++) {
        if (fmt == BF16) {
            round_to_bf16(x + (size_t)t * n, r.data() + (size_t)t * n, n);
            ptr[t] = r.data() + (size_t)t * n;
        } else if (fmt_is_float(fmt)) {
            ptr[t] = x + (size_t)t * n;
        } else {
            kt.quantize(x + (size_t)t * n, n, q.data() + t * kt.act_bytes(n));
            ptr[t] = q.data() + t * kt.act_bytes(n);
        }
    }
    run_rows(kt, fmt, w, row_bytes(fmt, n), nrows, ptr.data(), ntok, n, out, nrows);
    return 0;
}

}  // extern "C"
