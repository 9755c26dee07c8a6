// Attention over one call's cached positions (pieces of contiguous rows), for every query head of a
// token at once (AttendFn, common.h), written once over a small vector type (Vec512, Vec256) and
// included by the AVX512 and AVX2 kernel files; attention.cpp merges the calls' partial results
// (flash-decoding). Internal linkage only.
// Two paths. Grouped (GQA heads in batches of Vec::kHeads of one kv head, head widths in runs of
// 4 vectors): two passes over the rows front to back, the scores of every head (each key vector
// loaded, straight from the float32, fp16 or bf16 cache, serves a batch of heads: half a load a
// multiply-add where the per-head path needs 1.25), then the outputs (16 rows at a time, which
// stay in L1 while every head's batch reads them). A prefetch stream runs a fixed distance ahead
// of the rows read, keys then values, as the weight kernels' streams do: the rows come from DRAM
// at decode. Qwen3 shape (32 heads, 4 kv heads of 128, fp16), 280 positions a thread, both cores,
// cold cache, Zen 5: 37 us where per-block calls merged one by one (the chunk's first block read
// in, each next one prefetched during the one before) took 41-45.
// Per head (other shapes): the call's rows repacked as float32 once, then each head alone.
#pragma once
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include <algorithm>

#include "common.h"

namespace {

const int kOutRows = 16;  // rows the outputs pass reads at a time (grouped path)

// A prefetch stream over a call's rows in the order the grouped path reads them: every piece's keys,
// then every piece's values, `lines` cache lines ahead of the reads (none for lines 0), into L2
// (Tuning::attn_to_l2) or L1. step() issues one line; the passes call it once per vector of rows
// they read, so the distance holds.
struct RowStream {
    const AttnPiece* pieces;
    int count, piece = 0, is_values = 0;
    int64_t row_bytes;
    const char *p = nullptr, *end = nullptr;
    const bool to_l2 = g_tuning.attn_to_l2 != 0;
    RowStream(const AttnPiece* pc, int n, int64_t rb, int lines) : pieces(pc), count(lines > 0 ? n : 0), row_bytes(rb) {
        open();
        for (int i = 0; i < lines && p; i++) step();
    }
    void open() {  // the next piece with rows, keys before values; p null past the last
        for (;; piece++) {
            if (piece >= count) {
                if (is_values || count == 0) {
                    p = nullptr;
                    return;
                }
                piece = 0, is_values = 1;
            }
            const AttnPiece& c = pieces[piece];
            p = (const char*)(is_values ? c.v : c.k), end = p + c.n * row_bytes;
            if (c.n > 0) return;
        }
    }
    inline void step() {
        if (!p) return;
        if (to_l2) _mm_prefetch(p, _MM_HINT_T1);
        else _mm_prefetch(p, _MM_HINT_T0);
        if ((p += 64) >= end) piece++, open();
    }
};

struct bf16_t {  // a bf16 cache's element (fp16 ones are uint16_t)
    uint16_t bits;
};
template <class Vec> inline typename Vec::T load_any(const float* p) { return Vec::load(p); }
template <class Vec> inline typename Vec::T load_any(const uint16_t* p) { return Vec::load_f16(p); }
template <class Vec> inline typename Vec::T load_any(const bf16_t* p) { return Vec::load_bf16(&p->bits); }

// Scores of 4 positions for one head: the 4 sums reduced together.
template <class Vec>
inline void scores4(const float* q, const float* k, int64_t stride, int d, float scale, float* out) {
    typename Vec::T a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
    for (int i = 0; i < d; i += Vec::W) {
        const typename Vec::T qv = Vec::load(q + i);
        a0 = Vec::fmadd(qv, Vec::load(k + i), a0);
        a1 = Vec::fmadd(qv, Vec::load(k + stride + i), a1);
        a2 = Vec::fmadd(qv, Vec::load(k + 2 * stride + i), a2);
        a3 = Vec::fmadd(qv, Vec::load(k + 3 * stride + i), a3);
    }
    Vec::sum4(a0, a1, a2, a3, scale, out);
}

// scale * q . k of one head and one cache row (a piece's last positions short of 4)
template <class Vec, class E>
inline float score1(const float* q, const E* k, int d, float scale) {
    typename Vec::T a = Vec::zero();
    for (int i = 0; i < d; i += Vec::W) a = Vec::fmadd(Vec::load(q + i), load_any<Vec>(k + i), a);
    return Vec::reduce_add(a) * scale;
}

// out[0 .. NV vectors) = sum over the S positions of p[t] * row t; returns the floats written
template <class Vec, int NV>
inline int out_slice(const float* p, const float* rows, int64_t stride, int S, float* out) {
    typename Vec::T acc[NV];
    for (int v = 0; v < NV; v++) acc[v] = Vec::zero();
    for (int t = 0; t < S; t++) {
        const typename Vec::T w = Vec::set1(p[t]);
        for (int v = 0; v < NV; v++) acc[v] = Vec::fmadd(w, Vec::load(rows + t * stride + v * Vec::W), acc[v]);
    }
    for (int v = 0; v < NV; v++) Vec::store(out + v * Vec::W, acc[v]);
    return NV * Vec::W;
}

// The call's cache rows (`stride` elements apart, of a CacheType) repacked as float32, per kv
// head: packed[g][t][d] over the S positions of all pieces. One pass front to back over the rows,
// a row's lines of the prefetch stream issued with it; the heads then read their kv head's rows
// side by side (rows a power-of-two apart fall into a few L1 sets and evict each other).
template <class Vec>
void pack_rows(const AttnPiece* pieces, int count, bool is_values, int cache_type, int64_t stride, int S, int G, int d,
               float* packed, RowStream& ahead) {
    const int64_t row_lines = (stride * cache_elem_bytes(cache_type) + 63) / 64;
    int t = 0;
    for (int c = 0; c < count; c++) {
        const void* rows = is_values ? pieces[c].v : pieces[c].k;
        for (int r = 0; r < pieces[c].n; r++, t++) {
            for (int64_t i = 0; i < row_lines; i++) ahead.step();
            for (int g = 0; g < G; g++) {
                float* dst = packed + ((size_t)g * S + t) * d;
                if (cache_type != kCacheF32) {
                    const uint16_t* src = (const uint16_t*)rows + r * stride + (size_t)g * d;
                    for (int i = 0; i < d; i += Vec::W)
                        Vec::store(dst + i, cache_type == kCacheF16 ? Vec::load_f16(src + i) : Vec::load_bf16(src + i));
                } else {
                    memcpy(dst, (const float*)rows + r * stride + (size_t)g * d, sizeof(float) * d);
                }
            }
        }
    }
}

// p[h][0 .. 4) = scale * q_h . k_t for H heads (q rows d apart) and 4 positions (cache rows
// `stride` elements apart, p rows S apart)
template <class Vec, int H, class E>
inline void scores_batch(const float* q, int d, const E* k, int64_t stride, float scale, float* p, int S,
                         RowStream& ahead) {
    typename Vec::T a[H][4];
    for (int h = 0; h < H; h++)
        for (int t = 0; t < 4; t++) a[h][t] = Vec::zero();
    for (int i = 0; i < d; i += Vec::W) {
        ahead.step();
        const typename Vec::T k0 = load_any<Vec>(k + i), k1 = load_any<Vec>(k + stride + i),
                              k2 = load_any<Vec>(k + 2 * stride + i), k3 = load_any<Vec>(k + 3 * stride + i);
        for (int h = 0; h < H; h++) {
            const typename Vec::T qv = Vec::load(q + (size_t)h * d + i);
            a[h][0] = Vec::fmadd(qv, k0, a[h][0]);
            a[h][1] = Vec::fmadd(qv, k1, a[h][1]);
            a[h][2] = Vec::fmadd(qv, k2, a[h][2]);
            a[h][3] = Vec::fmadd(qv, k3, a[h][3]);
        }
    }
    for (int h = 0; h < H; h++) Vec::sum4(a[h][0], a[h][1], a[h][2], a[h][3], scale, p + (size_t)h * S);
}

// out[h][0 .. 4 vectors) += sum over n rows of p[h][t] * v_t[0 ..], for H heads (out rows d
// apart, p rows S apart)
template <class Vec, int H, class E>
inline void out_batch(const float* p, int S, const E* v, int64_t stride, int n, float* out, int d, RowStream& ahead) {
    typename Vec::T a[H][4];
    for (int h = 0; h < H; h++)
        for (int j = 0; j < 4; j++) a[h][j] = Vec::load(out + (size_t)h * d + j * Vec::W);
    for (int t = 0; t < n; t++) {
        const E* row = v + t * stride;
        ahead.step();
        const typename Vec::T v0 = load_any<Vec>(row), v1 = load_any<Vec>(row + Vec::W),
                              v2 = load_any<Vec>(row + 2 * Vec::W), v3 = load_any<Vec>(row + 3 * Vec::W);
        for (int h = 0; h < H; h++) {
            const typename Vec::T w = Vec::set1(p[(size_t)h * S + t]);
            a[h][0] = Vec::fmadd(w, v0, a[h][0]);
            a[h][1] = Vec::fmadd(w, v1, a[h][1]);
            a[h][2] = Vec::fmadd(w, v2, a[h][2]);
            a[h][3] = Vec::fmadd(w, v3, a[h][3]);
        }
    }
    for (int h = 0; h < H; h++)
        for (int j = 0; j < 4; j++) Vec::store(out + (size_t)h * d + j * Vec::W, a[h][j]);
}

// p[0 .. S) <- exp(p - max); m = the maximum, l = the sum
template <class Vec>
inline void softmax_part(float* p, int S, float* m, float* l) {
    // the maximum a vector at a time: a scalar compare chain took a fifth of a decode step's attention
    typename Vec::T top = Vec::set1(-INFINITY);
    int j = 0;
    for (; j + Vec::W <= S; j += Vec::W) top = Vec::max(Vec::load(p + j), top);  // a NaN score loses, as below
    float best = Vec::reduce_max(top);
    for (; j < S; j++) best = p[j] > best ? p[j] : best;  // a plain compare: fmaxf is a library call
    typename Vec::T sum = Vec::zero();
    const typename Vec::T bv = Vec::set1(best);
    int i = 0;
    for (; i + Vec::W <= S; i += Vec::W) {
        const typename Vec::T e = Vec::exp(Vec::sub(Vec::load(p + i), bv));
        Vec::store(p + i, e);
        sum = Vec::add(sum, e);
    }
    float total = Vec::reduce_add(sum);
    for (; i < S; i++) total += p[i] = expf(p[i] - best);
    *m = best;
    *l = total;
}

// The grouped path (see the top): pass 1 the scores p[N][S], rows front to back, every head batch
// on each 4 rows; then each head's softmax; pass 2 the outputs, kOutRows rows at a time.
template <class Vec, class E>
void attend_grouped(const float* q, int N, int per_group, int d, const AttnPiece* pieces, int count, int S,
                    int64_t stride, float scale, float* out, float* m, float* l, float* p, int ahead_lines) {
    const int H = Vec::kHeads;
    RowStream ahead(pieces, count, stride * (int64_t)sizeof(E), ahead_lines);
    for (int c = 0, t0 = 0; c < count; t0 += pieces[c++].n) {
        const E* keys = (const E*)pieces[c].k;
        const int n = pieces[c].n;
        int t = 0;
        for (; t + 4 <= n; t += 4)
            for (int h0 = 0; h0 < N; h0 += H)
                scores_batch<Vec, Vec::kHeads>(q + (size_t)h0 * d, d, keys + t * stride + (int64_t)(h0 / per_group) * d,
                                               stride, scale, p + (size_t)h0 * S + t0 + t, S, ahead);
        for (; t < n; t++)
            for (int h = 0; h < N; h++)
                p[(size_t)h * S + t0 + t] =
                    score1<Vec>(q + (size_t)h * d, keys + t * stride + (int64_t)(h / per_group) * d, d, scale);
    }
    for (int h = 0; h < N; h++) softmax_part<Vec>(p + (size_t)h * S, S, m + h, l + h);
    memset(out, 0, sizeof(float) * N * d);
    for (int c = 0, t0 = 0; c < count; t0 += pieces[c++].n) {
        const E* values = (const E*)pieces[c].v;
        for (int t = 0; t < pieces[c].n; t += kOutRows) {
            const int n = std::min(kOutRows, pieces[c].n - t);
            for (int h0 = 0; h0 < N; h0 += H)
                for (int i0 = 0; i0 < d; i0 += 4 * Vec::W)
                    out_batch<Vec, Vec::kHeads>(p + (size_t)h0 * S + t0 + t, S,
                                                values + t * stride + (int64_t)(h0 / per_group) * d + i0, stride, n,
                                                out + (size_t)h0 * d + i0, d, ahead);
        }
    }
}

// The per-head path (see the top). scratch: (N + 2 * G * d) * S floats.
template <class Vec>
void attend_heads(const float* q, int N, int per_group, int d, const AttnPiece* pieces, int count, int S,
                  int cache_type, int64_t stride, float scale, float* out, float* m, float* l, float* scratch,
                  int ahead_lines) {
    const int G = N / per_group;
    float* pk = scratch + (size_t)N * S;
    float* pv = pk + (size_t)G * S * d;
    // keys, then values: the packing order
    RowStream ahead(pieces, count, stride * cache_elem_bytes(cache_type), ahead_lines);
    pack_rows<Vec>(pieces, count, false, cache_type, stride, S, G, d, pk, ahead);
    pack_rows<Vec>(pieces, count, true, cache_type, stride, S, G, d, pv, ahead);
    for (int h = 0; h < N; h++) {
        const float* kg = pk + (size_t)(h / per_group) * S * d;
        const float* qh = q + (size_t)h * d;
        float* p = scratch + (size_t)h * S;
        int s = 0;
        for (; s + 4 <= S; s += 4) scores4<Vec>(qh, kg + (size_t)s * d, d, d, scale, p + s);
        for (; s < S; s++) p[s] = score1<Vec>(qh, kg + (size_t)s * d, d, scale);
        softmax_part<Vec>(p, S, m + h, l + h);
        // the output in slices of a compile-time number of vectors, which then stay in registers
        // over the call's values (with a run-time count they stay in memory: 3x slower)
        const float* vg = pv + (size_t)(h / per_group) * S * d;
        float* oh = out + (size_t)h * d;
        for (int i0 = 0; i0 < d;) {
            const int left = (d - i0) / Vec::W;
            if (left >= 16 && Vec::kSlice >= 16) i0 += out_slice<Vec, 16>(p, vg + i0, d, S, oh + i0);
            else if (left >= 8 && Vec::kSlice >= 8) i0 += out_slice<Vec, 8>(p, vg + i0, d, S, oh + i0);
            else if (left >= 4) i0 += out_slice<Vec, 4>(p, vg + i0, d, S, oh + i0);
            else i0 += out_slice<Vec, 1>(p, vg + i0, d, S, oh + i0);
        }
    }
}

// The attend kernel for vector type Vec (AttendFn, common.h): 0 for heads whose width the vectors
// do not divide, which dispatch.cpp then hands to a narrower ISA's kernel.
template <class Vec>
int attend_vec(const float* q, int N, int per_group, int d, const AttnPiece* pieces, int count, int cache_type,
               int64_t stride, float scale, float* out, float* m, float* l, float* scratch, int ahead_lines) {
    if (d % Vec::W) return 0;
    int S = 0;
    for (int c = 0; c < count; c++) S += pieces[c].n;
    if (per_group % Vec::kHeads == 0 && d % (4 * Vec::W) == 0) {
        if (cache_type == kCacheF16)
            attend_grouped<Vec, uint16_t>(q, N, per_group, d, pieces, count, S, stride, scale, out, m, l, scratch,
                                          ahead_lines);
        else if (cache_type == kCacheBF16)
            attend_grouped<Vec, bf16_t>(q, N, per_group, d, pieces, count, S, stride, scale, out, m, l, scratch,
                                        ahead_lines);
        else
            attend_grouped<Vec, float>(q, N, per_group, d, pieces, count, S, stride, scale, out, m, l, scratch,
                                       ahead_lines);
        return 1;
    }
    attend_heads<Vec>(q, N, per_group, d, pieces, count, S, cache_type, stride, scale, out, m, l, scratch,
                      ahead_lines);
    return 1;
}

}  // namespace
