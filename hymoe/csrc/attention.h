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
    int32_t num_blocks, block_size;          // the cache: [num_blocks, block_size, G, D]
    int32_t table_width;                     // M: blocks in each row's table
    int32_t cache_type;                      // cache elements: a CacheType (common.h)
    float eps, scale;                        // q/k RMSNorm epsilon; the score scale
    int64_t q_stride, k_stride, v_stride;    // floats between tokens' rows of q, k, v
    const float *q, *k, *v;                  // [B*T] rows: N*D, G*D, G*D values from q_stride etc.
    const float *q_norm, *k_norm;            // [D] or null
    const float *cos, *sin;                  // [B*T, D/2], or [P, D/2] by position (rope_at_position)
    void *k_cache, *v_cache;
    const int64_t* table;                    // [B, M] the block of each row's positions j*bs..(j+1)*bs-1
    const int64_t* slots;                    // [B*T] where each token's key and value go: block * bs + offset
    const int64_t* positions;                // [B, T]
    float* out;                              // [B*T, N*D]
    // what each buffer holds (values), which the sizes above must fit
    int64_t q_len, k_len, v_len, rope_len, cache_len, out_len, positions_len, slots_len,
        table_len;
    // 1: cos and sin are tables of every position below rope_len / (D/2), a token's row its position
    // (the model's, built once: a decode step then computes no rotation of its own)
    int32_t rope_at_position;
};
}

// 0, or -1 bad sizes, -2 a block, slot or position outside the cache, -4 a buffer smaller than the sizes
// is_prepared: attention alone, over queries given ready [B*T, N*D] and a cache already written
// (MLA's latent attention: one kv head whose rows are the keys and the values)
int gqa_check(const GqaArgs& a, bool is_prepared = false);
// Runs inside a pool job.
void gqa_run(const GqaArgs& a, const KernelTable& kt, Pool& pool, std::vector<float>& scratch,
             bool is_prepared = false);
