// Attention over one chunk of cached positions, for every query head of a token at once
// (AttendFn, common.h), written once over a small vector type (Vec512, Vec256) and included by
// the AVX512 and AVX2 kernel files; the chunks' partial results are merged by attention.cpp
// (flash-decoding). Internal linkage only.
// Two paths. Grouped (GQA heads in batches of Vec::kHeads of one kv head, head widths in runs of
// 4 vectors): every key or value vector loaded, straight from the float32 or fp16 cache, serves a
// batch of heads, so a multiply-add needs half a load where the per-head path needs 1.25 (decode
// attention on a Zen 4 core is bound by those loads: 29 -> 13 us for 32 heads over 64 positions).
// Per head (other shapes): the chunk's rows repacked as float32 once, then each head alone.
#pragma once
#include <immintrin.h>
#include <math.h>

#include "common.h"

namespace {

const int kAhead = 8;  // positions the score loop prefetches ahead

// one line of the next piece's rows, keys and values in turn, while lines are left
inline void ahead_step(AttnAhead& a) {
    if (a.done < 2 * a.lines) {
        _mm_prefetch((a.done & 1 ? a.v : a.k) + (a.done >> 1) * 64, _MM_HINT_T0);
        a.done++;
    }
}

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

// The chunk's S cache rows (`stride` elements apart, float32 or fp16) repacked as float32,
// per kv head: packed[g][t][d]. One pass front to back over the rows, which the hardware and the
// prefetches stream; the heads then read their kv head's rows side by side (rows a power-of-two
// apart fall into a few L1 sets and evict each other).
template <class Vec>
void pack_rows(const void* rows, bool is_f16, int64_t stride, int S, int G, int d, float* packed) {
    for (int t = 0; t < S; t++) {
        if (t + kAhead < S)
            for (int i = 0; i < G * d; i += is_f16 ? 32 : 16)
                _mm_prefetch((const char*)rows + ((t + kAhead) * stride + i) * (is_f16 ? 2 : 4), _MM_HINT_T0);
        for (int g = 0; g < G; g++) {
            float* dst = packed + ((size_t)g * S + t) * d;
            if (is_f16) {
                const uint16_t* src = (const uint16_t*)rows + t * stride + (size_t)g * d;
                for (int i = 0; i < d; i += Vec::W) Vec::store(dst + i, Vec::load_f16(src + i));
            } else {
                memcpy(dst, (const float*)rows + t * stride + (size_t)g * d, sizeof(float) * d);
            }
        }
    }
}

template <class Vec> inline typename Vec::T load_any(const float* p) { return Vec::load(p); }
template <class Vec> inline typename Vec::T load_any(const uint16_t* p) { return Vec::load_f16(p); }

// p[h][s .. s + 4) = scale * q_h . k_{s+t} for H heads (q rows d apart) and 4 positions (cache
// rows `stride` elements apart); the key vectors prefetched kAhead positions ahead
template <class Vec, int H, class E>
inline void scores_batch(const float* q, int d, const E* k, int64_t stride, float scale, float* p, int S,
                         bool is_prefetched, AttnAhead& ahead) {
    typename Vec::T a[H][4];
    for (int h = 0; h < H; h++)
        for (int t = 0; t < 4; t++) a[h][t] = Vec::zero();
    for (int i = 0; i < d; i += Vec::W) {
        ahead_step(ahead);
        if (is_prefetched)
            for (int t = 0; t < 4; t++) _mm_prefetch((const char*)(k + (kAhead + t) * stride + i), _MM_HINT_T0);
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

// out[h][i0 .. i0 + 4 vectors) = sum over the S positions of p[h][t] * v_t[i0 ..], for H heads
template <class Vec, int H, class E>
inline void out_batch(const float* p, int S, const E* v, int64_t stride, int i0, float* out, int d, AttnAhead& ahead) {
    typename Vec::T a[H][4];
    for (int h = 0; h < H; h++)
        for (int j = 0; j < 4; j++) a[h][j] = Vec::zero();
    for (int t = 0; t < S; t++) {
        const E* row = v + t * stride + i0;
        ahead_step(ahead);
        if (i0 == 0 && t + kAhead < S) _mm_prefetch((const char*)(row + kAhead * stride), _MM_HINT_T0);
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
        for (int j = 0; j < 4; j++) Vec::store(out + (size_t)h * d + i0 + j * Vec::W, a[h][j]);
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

// The grouped path (see the top): heads in batches of Vec::kHeads, rows read where they lie.
// scratch: N * S floats.
template <class Vec, class E>
void attend_grouped(const float* q, int N, int per_group, int d, const E* keys, const E* values, int64_t stride,
                    int S, float scale, float* out, float* m, float* l, float* scratch) {
    const int H = Vec::kHeads;
    AttnAhead ahead = *attn_ahead();  // a local copy: the loops keep its count in a register
    for (int h0 = 0; h0 < N; h0 += H) {
        const int64_t g = h0 / per_group;  // the batch's kv head, at g * d in a row
        const bool is_first = h0 % per_group == 0;  // the group's first batch brings its rows in
        const E *kg = keys + g * d, *vg = values + g * d;
        float* p = scratch + (size_t)h0 * S;
        int s = 0;
        for (; s + 4 <= S; s += 4)
            scores_batch<Vec, Vec::kHeads>(q + (size_t)h0 * d, d, kg + s * stride, stride, scale, p + s, S,
                                           is_first && s + kAhead + 4 <= S, ahead);
        for (int h = h0; h < h0 + H; h++) {
            float* ph = scratch + (size_t)h * S;
            for (int t = s; t < S; t++) {
                typename Vec::T a = Vec::zero();
                for (int i = 0; i < d; i += Vec::W)
                    a = Vec::fmadd(Vec::load(q + (size_t)h * d + i), load_any<Vec>(kg + t * stride + i), a);
                ph[t] = Vec::reduce_add(a) * scale;
            }
            softmax_part<Vec>(ph, S, m + h, l + h);
        }
        for (int i0 = 0; i0 < d; i0 += 4 * Vec::W)
            out_batch<Vec, Vec::kHeads>(p, S, vg, stride, i0, out + (size_t)h0 * d, d, ahead);
    }
    *attn_ahead() = ahead;
}

// q [N][d] (N heads, per_group of them per kv head) against S cached positions (rows `stride`
// elements apart, kv head g at g * d in a row). Writes, per head, the chunk's score maximum m[h],
// the sum of exp(score - m[h]) l[h] and the unnormalised output out[h][d].
// scratch: (N + 2 * G * d) * S floats.
template <class Vec>
void attend_chunk(const float* q, int N, int per_group, int d, const void* keys, const void* values, int is_f16,
                  int64_t stride, int S, float scale, float* out, float* m, float* l, float* scratch) {
    if (per_group % Vec::kHeads == 0 && d % (4 * Vec::W) == 0) {
        if (is_f16)
            attend_grouped<Vec>(q, N, per_group, d, (const uint16_t*)keys, (const uint16_t*)values, stride, S, scale,
                                out, m, l, scratch);
        else
            attend_grouped<Vec>(q, N, per_group, d, (const float*)keys, (const float*)values, stride, S, scale, out,
                                m, l, scratch);
        return;
    }
    const int G = N / per_group;
    float* pk = scratch + (size_t)N * S;
    float* pv = pk + (size_t)G * S * d;
    pack_rows<Vec>(keys, is_f16, stride, S, G, d, pk);
    pack_rows<Vec>(values, is_f16, stride, S, G, d, pv);
    for (int h = 0; h < N; h++) {
        const float* kg = pk + (size_t)(h / per_group) * S * d;
        const float* qh = q + (size_t)h * d;
        float* p = scratch + (size_t)h * S;
        int s = 0;
        for (; s + 4 <= S; s += 4) scores4<Vec>(qh, kg + (size_t)s * d, d, d, scale, p + s);
        for (; s < S; s++) {
            typename Vec::T a = Vec::zero();
            for (int i = 0; i < d; i += Vec::W) a = Vec::fmadd(Vec::load(qh + i), Vec::load(kg + (size_t)s * d + i), a);
            p[s] = Vec::reduce_add(a) * scale;
        }
        softmax_part<Vec>(p, S, m + h, l + h);
        // the output in slices of a compile-time number of vectors, which then stay in registers
        // over the chunk's values (with a run-time count they stay in memory: 3x slower)
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

// The attend kernel for vector type Vec: 0 for heads whose width the vectors do not divide, which
// dispatch.cpp then hands to a narrower ISA's kernel.
template <class Vec>
int attend_vec(const float* q, int N, int per_group, int d, const void* keys, const void* values, int is_f16,
               int64_t stride, int S, float scale, float* out, float* m, float* l, float* scratch) {
    if (d % Vec::W) return 0;
    attend_chunk<Vec>(q, N, per_group, d, keys, values, is_f16, stride, S, scale, out, m, l, scratch);
    return 1;
}

}  // namespace
