// Grouped-query attention on the CPU (attention.cpp); the arguments are mirrored by
// hymoe/experts/native_attention.py (ctypes.Structure): keep the field order.
#pragma once
#include <vector>

#include "dispatch.h"
#include "pool.h"

extern "C" {
struct GqaArgs {
    int32_t num_rows, tokens, heads, kv_heads, head_dim;  // B, T, N, G, D
    int32_t kv_len, window, is_interleaved;  // S positions attended; sliding window (0: none)
    int32_t num_slots, max_len;              // the cache: [num_slots, max_len + 1, G, D]
    int32_t is_f16;                          // cache elements: fp16, or float32
    float eps, scale;                        // q/k RMSNorm epsilon; the score scale
    int64_t q_stride, k_stride, v_stride;    // floats between tokens' rows of q, k, v
    const float *q, *k, *v;                  // [B*T] rows: N*D, G*D, G*D values from q_stride etc.
    const float *q_norm, *k_norm;            // [D] or null
    const float *cos, *sin;                  // [B*T, D/2]
    void *k_cache, *v_cache;
    const int64_t* slots;                    // [B] cache slot per row, or null: row b in slot b
    const int64_t* positions;                // [B, T]
    float* out;                              // [B*T, N*D]
    // what each buffer holds (values), which the sizes above must fit
    int64_t q_len, k_len, v_len, rope_len, cache_len, out_len, positions_len, slots_len;
};
}

// 0, or -1 bad sizes, -2 a slot or position outside the cache, -4 a buffer smaller than the sizes
int gqa_check(const GqaArgs& a);
// Runs inside a pool job.
void gqa_run(const GqaArgs& a, const KernelTable& kt, Pool& pool, std::vector<float>& scratch);
