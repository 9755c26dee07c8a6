// Grouped-query attention on the CPU in one call on the engine's pool: per-head q/k RMSNorm, rotary
// embedding, the new keys and values written into the cache, and attention over each token's
// cached positions, chunk by chunk (flash-decoding). In torch a decode step is ~30 small
// operations per layer, whose fixed costs outweigh the arithmetic at one token; for prompts,
// torch's threads spin between its operations on the cores the engine's pool computes on.
#include "attention.h"

#include <math.h>

#include <algorithm>
#include <vector>

// moe.cpp: RMSNorm of rows, the reference's order; in place too (a row's squares are summed first)
extern "C" void hymoe_rms_norm(const float* x, const float* w, float* out, int rows, int n, float eps);

namespace {

// rotate x [D] by the position's cos/sin [D/2]: halves (x_i, x_{i+D/2}) or adjacent pairs
// (x_2i, x_2i+1), the pairs' results stored de-interleaved as hymoe's torch path does; a loop
// for each layout, which the compiler vectorizes
void rope(float* x, const float* cos, const float* sin, int d, bool interleaved, float* tmp) {
    const int h = d / 2;
    if (interleaved) {
        for (int i = 0; i < h; i++) {
            const float a = x[2 * i], b = x[2 * i + 1];
            tmp[i] = a * cos[i] - b * sin[i];
            tmp[i + h] = b * cos[i] + a * sin[i];
        }
    } else {
        for (int i = 0; i < h; i++) {
            const float a = x[i], b = x[i + h];
            tmp[i] = a * cos[i] - b * sin[i];
            tmp[i + h] = b * cos[i] + a * sin[i];
        }
    }
    memcpy(x, tmp, sizeof(float) * d);
}

// n floats into a cache at element `at`: as they are, or rounded to fp16 or bf16 (as torch rounds)
void store(const KernelTable& kt, void* cache, int64_t at, const float* x, int n, int cache_type) {
    if (cache_type == kCacheF32) return (void)memcpy((float*)cache + at, x, sizeof(float) * n);
    if (cache_type == kCacheF16) return kt.to_f16(x, n, (uint16_t*)cache + at);
    for (int i = 0; i < n; i++) ((uint16_t*)cache)[at + i] = f32_to_bf16(x[i]);
}

// Whether a buffer of `len` values is shorter than `rows` rows of `width`, `stride` apart.
bool short_of(int64_t len, int64_t rows, int64_t stride, int64_t width) {
    return stride < width || (rows - 1) * stride + width > len;
}

// is_prepared: the queries given ready, side by side (q_stride N * D), the cache already written:
// k, v and the rotation are not read
bool buffer_error(const GqaArgs& a, bool is_prepared) {
    const int64_t BT = (int64_t)a.num_rows * a.tokens, G = a.kv_heads, D = a.head_dim;
    if (a.num_blocks < 1 || a.block_size < 1 || a.table_width < 1 || !a.table || !a.slots) return true;
    if (is_prepared)
        return !a.q || a.q_stride != a.heads * D || short_of(a.q_len, BT, a.q_stride, a.heads * D) ||
               (int64_t)a.num_blocks * a.block_size * G * D > a.cache_len || BT * a.heads * D > a.out_len ||
               BT > a.positions_len || BT > a.slots_len || (int64_t)a.num_rows * a.table_width > a.table_len;
    return short_of(a.q_len, BT, a.q_stride, a.heads * D) || short_of(a.k_len, BT, a.k_stride, G * D) ||
           short_of(a.v_len, BT, a.v_stride, G * D) || (!a.rope_at_position && BT * (D / 2) > a.rope_len) ||
           (int64_t)a.num_blocks * a.block_size * G * D > a.cache_len || BT * a.heads * D > a.out_len ||
           BT > a.positions_len || BT > a.slots_len || (int64_t)a.num_rows * a.table_width > a.table_len;
}

// The running (out, m, l) of N heads and another part's, merged: each weighted by exp(its maximum
// - the larger one), as the chunks are in phase 3.
void merge(float* out, float* m, float* l, const float* out2, const float* m2, const float* l2, int N, int D) {
    for (int h = 0; h < N; h++) {
        const float best = std::max(m[h], m2[h]), w = expf(m[h] - best), w2 = expf(m2[h] - best);
        for (int i = 0; i < D; i++) out[(size_t)h * D + i] = out[(size_t)h * D + i] * w + out2[(size_t)h * D + i] * w2;
        l[h] = l[h] * w + l2[h] * w2;
        m[h] = best;
    }
}

// Token bt's heads [from, to) of the N + G: a query head normalised and rotated into q [N][D]; a
// kv head's key normalised, rotated and stored, and its value stored, at the token's slot.
void prepare_heads(const GqaArgs& a, const KernelTable& kt, int bt, int from, int to, float* q) {
    const int N = a.heads, D = a.head_dim;
    const size_t row = a.rope_at_position ? (size_t)a.positions[bt] : (size_t)bt;  // checked by gqa_check
    const float *cos = a.cos + row * (D / 2), *sin = a.sin + row * (D / 2);
    float tmp[1024], k[1024];
    const int64_t at = a.slots[bt] * (int64_t)a.kv_heads * D;  // this token's row, in elements
    for (int h = from; h < to; h++) {
        if (h < N) {
            memcpy(q + (size_t)h * D, a.q + (size_t)bt * a.q_stride + (size_t)h * D, sizeof(float) * D);
            if (a.q_norm) hymoe_rms_norm(q + (size_t)h * D, a.q_norm, q + (size_t)h * D, 1, D, a.eps);
            rope(q + (size_t)h * D, cos, sin, D, a.is_interleaved, tmp);
            continue;
        }
        const int g = h - N;
        memcpy(k, a.k + (size_t)bt * a.k_stride + (size_t)g * D, sizeof(float) * D);
        if (a.k_norm) hymoe_rms_norm(k, a.k_norm, k, 1, D, a.eps);
        rope(k, cos, sin, D, a.is_interleaved, tmp);
        store(kt, a.k_cache, at + (int64_t)g * D, k, D, a.cache_type);
        store(kt, a.v_cache, at + (int64_t)g * D, a.v + (size_t)bt * a.v_stride + (size_t)g * D, D, a.cache_type);
    }
}

// Row b's token (its queries q [N][D]) over positions [first, first + n), n >= 1: the cache rows
// as pieces of contiguous rows (a block's), in attend calls of at most Tuning::attn_call_rows
// positions, the first straight into o [N][D], m and l [N], the rest merged in.
void attend_positions(const GqaArgs& a, const KernelTable& kt, int b, const float* q, int64_t first, int64_t n,
                      float* o, float* m, float* l) {
    const int N = a.heads, G = a.kv_heads, D = a.head_dim;
    const int64_t pos_stride = (int64_t)G * D, bs = a.block_size, most = std::max(1, g_tuning.attn_call_rows);
    const size_t elem = cache_elem_bytes(a.cache_type), part = (size_t)N * D;
    static thread_local std::vector<float> work, other;
    static thread_local std::vector<AttnPiece> pieces;
    work.resize((size_t)(N + 2 * G * D) * std::min<int64_t>(n, most));
    other.resize(part + 2 * N);
    const int ahead = a.tokens == 1 ? g_tuning.attn_ahead : 0;  // at decode this unit alone reads the rows, from DRAM
    for (int64_t p = first; p < first + n;) {
        const bool is_first = p == first;
        pieces.clear();
        for (int64_t rows = 0; p < first + n && rows < most;) {
            const int64_t block = a.table[b * (int64_t)a.table_width + p / bs], off = p % bs;
            const int64_t take = std::min(std::min(first + n - p, bs - off), most - rows);
            const size_t at = (size_t)((block * bs + off) * pos_stride) * elem;
            pieces.push_back({(const char*)a.k_cache + at, (const char*)a.v_cache + at, (int)take});
            p += take, rows += take;
        }
        float *po = is_first ? o : other.data(), *pm = is_first ? m : po + part, *pl = is_first ? l : pm + N;
        run_attend(kt, q, N, N / G, D, pieces.data(), (int)pieces.size(), a.cache_type, pos_stride, a.scale, po, pm, pl,
                   work.data(), ahead);
        if (!is_first) merge(o, m, l, po, pm, pl, N, D);
    }
}

// Runs of heads each token's per-head work splits into: enough units for every thread (two
// each, for balance) when the tokens are few, one run a token otherwise (a unit is an atomic claim).
int head_parts(int heads, int tokens, int threads) {
    return std::max(1, std::min(heads, (2 * threads + tokens - 1) / tokens));
}

}  // namespace

int gqa_check(const GqaArgs& a, bool is_prepared) {
    if (a.num_rows < 1 || a.tokens < 1 || a.heads < 1 || a.kv_heads < 1 || a.heads % a.kv_heads) return -1;
    if (a.head_dim < 2 || a.head_dim % 2 || a.head_dim > 1024 || a.cache_type < kCacheF32 || a.cache_type > kCacheBF16) return -1;
    if (a.rope_at_position != 0 && a.rope_at_position != 1) return -1;
    if (buffer_error(a, is_prepared)) return -4;
    if (a.kv_len < 1 || a.kv_len > (int64_t)a.table_width * a.block_size) return -1;
    const int64_t used = (a.kv_len + a.block_size - 1) / a.block_size, cells = (int64_t)a.num_blocks * a.block_size;
    for (int b = 0; b < a.num_rows; b++) {
        for (int64_t j = 0; j < used; j++) {
            const int64_t block = a.table[b * (int64_t)a.table_width + j];
            if (block < 0 || block >= a.num_blocks) return -2;
        }
        for (int t = 0; t < a.tokens; t++) {
            const int64_t bt = (int64_t)b * a.tokens + t;
            if (a.positions[bt] < 0 || a.slots[bt] < 0 || a.slots[bt] >= cells) return -2;
            if (a.rope_at_position && !is_prepared && (a.positions[bt] + 1) * (a.head_dim / 2) > a.rope_len) return -4;
        }
    }
    return 0;
}

void gqa_run(const GqaArgs& a, const KernelTable& kt, Pool& pool, std::vector<float>& scratch, bool is_prepared) {
    const int B = a.num_rows, T = a.tokens, N = a.heads, G = a.kv_heads, D = a.head_dim;
    const int BT = B * T;
    // phase 1, per token and run of heads: queries normalised and rotated; keys normalised, rotated
    // and stored; values stored. A few tokens split their heads over the threads (one thread
    // rotating a token's 36 heads while the other waited: a tenth of the attention). At decode (one
    // token a row) the phase 2 units do it instead, a barrier fewer: each its token's queries, and
    // the unit whose chunk holds the token's position its key and value (no other unit reads them).
    const bool is_fused = T == 1 && !is_prepared;
    static thread_local std::vector<float> queries;
    if (!is_fused && !is_prepared) queries.resize((size_t)BT * N * D);
    float* own = queries.data();  // this thread's buffer: the pool's threads write it through this pointer
    const float* q_all = is_prepared ? a.q : own;  // [BT, N, D]: after norm and rotation (phase 1), or as given
    const int HG = N + G, runs = head_parts(HG, BT, pool.size());
    if (!is_fused && !is_prepared)
        pool.parallel_for(BT * runs, [&](int unit, int) {
            const int bt = unit / runs, run = unit % runs;
            prepare_heads(a, kt, bt, run * HG / runs, (run + 1) * HG / runs, own + (size_t)bt * N * D);
        });

    // phase 2, per (token, chunk of the positions it may attend: causal, and within the sliding
    // window if any; a padding row, past kv_len, attends anywhere): every head over the chunk, the
    // cache rows streamed front to back. Enough chunks for every thread at one token.
    std::vector<int64_t> lo(BT), len(BT);
    int64_t longest = 1;
    for (int bt = 0; bt < BT; bt++) {
        const int64_t pos = a.positions[bt], hi = std::min<int64_t>(pos, a.kv_len - 1);
        lo[bt] = a.window > 0 && pos < a.kv_len ? std::max<int64_t>(0, pos - a.window + 1) : 0;
        len[bt] = hi - lo[bt] + 1;
        longest = std::max(longest, len[bt]);
    }
    // Tuning::attn_chunks chunks per thread at one token (each unit streams its chunk's cache rows once)
    const int chunks = (int)std::max<int64_t>(1, std::min<int64_t>((g_tuning.attn_chunks * pool.size() + BT - 1) / BT, (longest + 15) / 16));
    const size_t part = (size_t)N * D;  // one chunk's unnormalised outputs
    std::vector<float>& parts = scratch;
    parts.resize((size_t)BT * chunks * (part + 2 * N));
    float* outs = parts.data();
    float* stats = outs + (size_t)BT * chunks * part;  // m then l, per (token, chunk, head)
    pool.parallel_for(BT * chunks, [&](int unit, int) {
        const int bt = unit / chunks, c = unit % chunks, b = bt / T;
        const int64_t per = (len[bt] + chunks - 1) / chunks, first = lo[bt] + c * per;
        const int64_t n = std::min<int64_t>(per, lo[bt] + len[bt] - first);
        float *m = stats + ((size_t)bt * chunks + c) * 2 * N, *l = m + N;
        static thread_local std::vector<float> own_q;
        const float* q = q_all + (size_t)bt * N * D;
        if (is_fused) {
            const int64_t at = a.positions[bt] - lo[bt];  // the token's own position, in its chunks
            const int64_t writer = std::min<int64_t>(chunks - 1, std::max<int64_t>(0, at) / per);
            own_q.resize((size_t)N * D);
            prepare_heads(a, kt, bt, 0, c == writer ? HG : N, own_q.data());
            q = own_q.data();
        }
        if (n <= 0) {
            for (int h = 0; h < N; h++) m[h] = -INFINITY, l[h] = 0.f;
            return;
        }
        attend_positions(a, kt, b, q, first, n, outs + ((size_t)bt * chunks + c) * part, m, l);
    });

    // phase 3, per token and run of heads: the chunks merged, each weighted by exp(its maximum -
    // the overall one)
    const int parts3 = head_parts(N, BT, pool.size());
    pool.parallel_for(BT * parts3, [&](int unit, int) {
        const int bt = unit / parts3, run = unit % parts3;
        for (int h = run * N / parts3; h < (run + 1) * N / parts3; h++) {
            float best = -INFINITY, total = 0.f;
            for (int c = 0; c < chunks; c++) best = std::max(best, stats[((size_t)bt * chunks + c) * 2 * N + h]);
            float* o = a.out + (size_t)bt * N * D + (size_t)h * D;
            memset(o, 0, sizeof(float) * D);
            for (int c = 0; c < chunks; c++) {
                const float* st = stats + ((size_t)bt * chunks + c) * 2 * N;
                if (st[N + h] == 0.f) continue;
                const float w = expf(st[h] - best);
                total += w * st[N + h];
                const float* src = outs + ((size_t)bt * chunks + c) * part + (size_t)h * D;
                for (int i = 0; i < D; i++) o[i] += w * src[i];
            }
            for (int i = 0; i < D; i++) o[i] /= total;
        }
    });
}
