// A dense linear layer on the engine's pool: out[t] = W x[t] for weights kept in a GGUF block
// format, computed by the same per-row kernels and batch tiles as the routed experts.
#pragma once
#include <vector>

#include "dispatch.h"
#include "pool.h"

extern "C" {
// Mirrored by hymoe/experts/native_linear.py (ctypes.Structure): keep the field order.
// Up to kMaxParts matrices that read the same input (q, k and v; gate and up) in one job: their
// outputs lie side by side in each output row, part p's rows from column offset(p) on.
struct LinearPart {
    int32_t fmt, rows;
    const uint8_t* w;  // rows x row_bytes(fmt, n)
    int64_t w_bytes;   // what the caller gave: the rows must fit
};
enum { kMaxParts = 4 };
struct LinearArgs {
    int32_t num_tokens, n, num_parts, out_stride;  // out_stride = the parts' rows summed
    const float* x;                                // [T, n]
    float* out;                                    // [T, out_stride]
    LinearPart parts[kMaxParts];
};
}

extern "C" {
// Mirrored by hymoe/experts/native_linear.py (ctypes.Structure): keep the field order.
// One matrix per head, each against that head's own input (MLA's absorbed up-projections):
// out[t][h][r] = row r of W_h . x[t][h], for r < rows, h < heads, t < num_tokens.
struct HeadLinearArgs {
    int32_t fmt, heads, rows, n, num_tokens;
    const uint8_t* w;  // heads x rows rows of row_bytes(fmt, n): W_0's rows, then W_1's, ...
    int64_t w_bytes;
    const float* x;  // [T, heads, n]
    int64_t x_len;
    float* out;  // [T, heads, rows]
    int64_t out_len;
};
}

size_t fmt_row_bytes(int fmt, int n);  // 0 for a format without kernels (moe.cpp)
int fmt_block_size(int fmt);

// The activations and their per-token pointers, reused from call to call.
struct LinearScratch {
    std::vector<uint8_t> xq;
    std::vector<float> xr;
    std::vector<const void*> xq_ptr, xr_ptr, xf_ptr;
};

// 0, or -1 a format without kernels, -2 rows that do not split into blocks, -4 a weight, x (x_len
// floats) or out (out_len floats) smaller than the sizes say.
int linear_check(const LinearArgs& a, const KernelTable& kt, int64_t x_len, int64_t out_len);
// Runs inside a pool job (pool.run / pool.submit).
void linear_run(const LinearArgs& a, const KernelTable& kt, Pool& pool, LinearScratch& s);

// As linear_check, for a per-head call (-2 also for a row length the format's blocks do not split).
int head_linear_check(const HeadLinearArgs& a, const KernelTable& kt);
// Runs inside a pool job: each (token, head) input prepared once, then one unit a head.
void head_linear_run(const HeadLinearArgs& a, const KernelTable& kt, Pool& pool, LinearScratch& s);
