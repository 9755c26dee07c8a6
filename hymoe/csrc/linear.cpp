// Dense linear layers in their GGUF block formats (attention projections, shared experts, dense
// FFNs, the output head): the experts' kernels over one weight matrix, or a few that share an input.
#include "linear.h"

#include <algorithm>

RangeHint& range_hint();

namespace {

const int kTokenBlock = 64;  // tokens per kernel call, as in the MoE job (the batch tiles take 64)

const int kUnitsPerThread = 8;  // enough units that a thread slowed by a neighbour holds no one up
const int kMaxRows = 512;       // as the MoE job's units: long contiguous ranges stream best

// Rows per work unit: about kUnitsPerThread units per thread over all parts, 16 to kMaxRows rows
// (whole tiles of 16). At batch sizes past one token block, 64 rows: a unit's rows stay in L2
// while its token blocks pass over them.
int unit_rows(int total_rows, int num_tokens, int threads) {
    if (num_tokens > kTokenBlock) return 64;
    int r = total_rows / std::max(1, kUnitsPerThread * threads);
    r = std::max(16, std::min(kMaxRows, r));
    return (r + 15) / 16 * 16;
}

// Token slot i's activations for the kernels: quantized into s.xq and/or rounded to bf16 into s.xr
// as the weights' formats need them (null where not asked for); the float row x serves the rest.
struct Acts {
    const void *quant, *round;
};
Acts prepare_acts(const KernelTable& kt, const float* x, int n, bool quant, bool round, LinearScratch& s, size_t i) {
    Acts out = {nullptr, nullptr};
    if (quant) {
        const size_t xb = kt.act_bytes(n);
        kt.quantize(x, n, s.xq.data() + i * xb);
        out.quant = s.xq.data() + i * xb;
    }
    if (round) {
        round_to_bf16(x, s.xr.data() + i * n, n);
        out.round = s.xr.data() + i * n;
    }
    return out;
}

}  // namespace

int linear_check(const LinearArgs& a, const KernelTable& kt, int64_t x_len, int64_t out_len) {
    if (a.num_parts < 1 || a.num_parts > kMaxParts || a.num_tokens < 1 || a.n < 1) return -2;
    int64_t rows = 0;
    for (int p = 0; p < a.num_parts; p++) {
        const LinearPart& part = a.parts[p];
        if (!has_format(kt, part.fmt) || !fmt_row_bytes(part.fmt, 256)) return -1;
        if (a.n % fmt_block_size(part.fmt) || (a.n % 32 && !fmt_is_float(part.fmt)) || part.rows < 1) return -2;
        if (!part.w || (int64_t)part.rows * (int64_t)fmt_row_bytes(part.fmt, a.n) > part.w_bytes) return -4;
        if (!whole_groups(part.fmt, part.w, (int64_t)part.rows * (int64_t)fmt_row_bytes(part.fmt, a.n))) return -4;
        rows += part.rows;
    }
    if (rows != a.out_stride) return -2;
    const int64_t T = a.num_tokens;
    return !a.x || !a.out || T * a.n > x_len || T * a.out_stride > out_len ? -4 : 0;
}

void linear_run(const LinearArgs& a, const KernelTable& kt, Pool& pool, LinearScratch& s) {
    const int T = a.num_tokens, n = a.n;
    bool x_quant = false, x_round = false;
    for (int p = 0; p < a.num_parts; p++) {
        x_quant |= !fmt_is_float(a.parts[p].fmt);
        x_round |= a.parts[p].fmt == BF16;
    }
    const size_t xb = kt.act_bytes(n);
    if (x_quant) s.xq.resize((size_t)T * xb);
    if (x_round) s.xr.resize((size_t)T * n);
    s.xq_ptr.resize(T);
    s.xr_ptr.resize(T);
    s.xf_ptr.resize(T);
    // each token's activations once, shared by every part: quantized, rounded to bf16, or as given
    pool.parallel_for(T, [&](int t, int) {
        const float* x = a.x + (size_t)t * n;
        const Acts acts = prepare_acts(kt, x, n, x_quant, x_round, s, t);
        s.xf_ptr[t] = x, s.xq_ptr[t] = acts.quant, s.xr_ptr[t] = acts.round;
    });

    // units: (part, chunk of rows); unit u of part p is u - first[p]
    const int r1 = unit_rows(a.out_stride, T, pool.size());
    int first[kMaxParts + 1] = {0};
    for (int p = 0; p < a.num_parts; p++) first[p + 1] = first[p] + (a.parts[p].rows + r1 - 1) / r1;
    const int num_units = first[a.num_parts];
    auto locate = [&](int unit, int* part, int* r0) {
        int p = 0;
        while (unit >= first[p + 1]) p++;
        *part = p;
        *r0 = (unit - first[p]) * r1;
    };
    auto unit_weights = [&](int unit) -> const uint8_t* {  // the first rows a unit reads (prefetch hint)
        if (unit >= num_units) return nullptr;
        int p, r0;
        locate(unit, &p, &r0);
        return a.parts[p].w + (size_t)r0 * fmt_row_bytes(a.parts[p].fmt, n);
    };
    pool.parallel_for(num_units, [&](int unit, int) {
        int p, r0, col = 0;
        locate(unit, &p, &r0);
        for (int q = 0; q < p; q++) col += a.parts[q].rows;
        const LinearPart& part = a.parts[p];
        const int nr = std::min(r1, part.rows - r0);
        const size_t rb = fmt_row_bytes(part.fmt, n);
        const uint8_t* w = part.w + (size_t)r0 * rb;
        const void* const* acts = part.fmt == BF16 ? s.xr_ptr.data() : fmt_is_float(part.fmt) ? s.xf_ptr.data()
                                                                                             : s.xq_ptr.data();
        RangeHint& hint = range_hint();
        for (int tb = 0; tb < T; tb += kTokenBlock) {
            const int nt = std::min(kTokenBlock, T - tb);
            hint.next = tb + kTokenBlock < T ? w : unit_weights(pool.next_unit());
            run_rows(kt, part.fmt, w, rb, nr, acts + tb, nt, n, a.out + (size_t)tb * a.out_stride + col + r0,
                     (size_t)a.out_stride);
        }
    }, nullptr, g_tuning.linear_by_thread != 0);
}

int head_linear_check(const HeadLinearArgs& a, const KernelTable& kt) {
    if (a.heads < 1 || a.rows < 1 || a.n < 1 || a.num_tokens < 1) return -2;
    if (!has_format(kt, a.fmt) || !fmt_row_bytes(a.fmt, 256)) return -1;
    if (a.n % fmt_block_size(a.fmt) || (a.n % 32 && !fmt_is_float(a.fmt))) return -2;
    const int64_t rows = (int64_t)a.heads * a.rows, T = a.num_tokens;
    if (!a.w || rows * (int64_t)fmt_row_bytes(a.fmt, a.n) > a.w_bytes) return -4;
    if (!whole_groups(a.fmt, a.w, (int64_t)a.rows * (int64_t)fmt_row_bytes(a.fmt, a.n))) return -4;  // each head's
    return !a.x || !a.out || T * a.heads * a.n > a.x_len || T * rows > a.out_len ? -4 : 0;
}

void head_linear_run(const HeadLinearArgs& a, const KernelTable& kt, Pool& pool, LinearScratch& s) {
    const int T = a.num_tokens, H = a.heads, n = a.n, R = a.rows;
    const bool is_quant = !fmt_is_float(a.fmt), is_round = a.fmt == BF16;
    const size_t xb = kt.act_bytes(n), rb = fmt_row_bytes(a.fmt, n);
    const size_t inputs = (size_t)T * H;
    if (is_quant) s.xq.resize(inputs * xb);
    if (is_round) s.xr.resize(inputs * n);
    s.xf_ptr.resize(inputs);  // here [H][T]: a head's inputs side by side, as run_rows takes them
    pool.parallel_for((int)inputs, [&](int i, int) {  // i = t * H + h, x's order
        const float* x = a.x + (size_t)i * n;
        const Acts acts = prepare_acts(kt, x, n, is_quant, is_round, s, i);
        s.xf_ptr[(size_t)(i % H) * T + i / H] = is_quant ? acts.quant : is_round ? acts.round : x;
    });
    const size_t head_bytes = (size_t)R * rb;
    pool.parallel_for(H, [&](int h, int) {
        const uint8_t* w = a.w + h * head_bytes;
        RangeHint& hint = range_hint();
        for (int tb = 0; tb < T; tb += kTokenBlock) {
            const int nt = std::min(kTokenBlock, T - tb), next = pool.next_unit();
            hint.next = tb + kTokenBlock < T ? w : next < H ? a.w + next * head_bytes : nullptr;
            run_rows(kt, a.fmt, w, rb, R, s.xf_ptr.data() + (size_t)h * T + tb, nt, n,
                     a.out + ((size_t)tb * H + h) * R, (size_t)H * R);
        }
    }, nullptr, g_tuning.linear_by_thread != 0);
}
