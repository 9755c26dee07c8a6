// Decode attention over one chunk of cached positions, for every query head of a token at once
// (KernelTable::attend_chunk), written once over a small vector type (Vec512, Vec256) and
// included by the AVX512 and AVX2 kernel files. Each position's cache row (all kv heads, G * D
// floats) is read front to back, so a chunk streams from memory; the chunks' partial results are
// merged by attention.cpp (flash-decoding). Internal linkage only.
#pragma once
#include <immintrin.h>
#include <math.h>

#include "common.h"

namespace {

const int kAhead = 8;  // positions the score loop prefetches ahead

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

// q [N][d] (N heads, per_group of them per kv head), rows of the chunk's S positions `stride`
// floats apart, kv head g at g * d in a row. Writes, per head, the chunk's score maximum m[h], the
// sum of exp(score - m[h]) l[h] and the unnormalised output out[h][d]. scratch: (N + d) * S floats.
template <class Vec>
void attend_chunk(const float* q, int N, int per_group, int d, const float* keys, const float* values,
                  int64_t stride, int S, float scale, float* out, float* m, float* l, float* scratch) {
    const int G = N / per_group;
    // Prefetch: the first key rows at once, then the key and value rows 8 positions ahead of the
    // scores (the values are read after all scores, from L2). A layer's cache comes from memory.
    for (int j = 0; j < kAhead && j < S; j++)
        for (int i = 0; i < G * d; i += 16) _mm_prefetch((const char*)(keys + j * stride + i), _MM_HINT_T0);
    int s = 0;
    for (; s + 4 <= S; s += 4) {
        for (int j = s + kAhead; j < s + kAhead + 4 && j < S; j++)
            for (int i = 0; i < G * d; i += 16) {
                _mm_prefetch((const char*)(keys + j * stride + i), _MM_HINT_T0);
                _mm_prefetch((const char*)(values + j * stride + i), _MM_HINT_T1);
            }
        for (int h = 0; h < N; h++)
            scores4<Vec>(q + (size_t)h * d, keys + s * stride + (h / per_group) * d, stride, d, scale,
                         scratch + (size_t)h * S + s);
    }
    for (; s < S; s++)
        for (int h = 0; h < N; h++) {
            typename Vec::T a = Vec::zero();
            for (int i = 0; i < d; i += Vec::W)
                a = Vec::fmadd(Vec::load(q + (size_t)h * d + i), Vec::load(keys + s * stride + (h / per_group) * d + i), a);
            scratch[(size_t)h * S + s] = Vec::reduce_add(a) * scale;
        }
    float* packed = scratch + (size_t)N * S;  // one kv head's values of the chunk, rows side by side
    for (int h = 0; h < N; h++) {
        float* p = scratch + (size_t)h * S;
        float best = -INFINITY;  // a plain compare: fmaxf is a library call per element here
        for (int i = 0; i < S; i++) best = p[i] > best ? p[i] : best;
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
        m[h] = best;
        l[h] = total;
        // Rows a whole position apart (G * d floats, a power of two) fall into a few L1 sets and
        // evict each other: each kv head's values are copied side by side once, for all its heads.
        if (h % per_group == 0)
            for (int t = 0; t < S; t++) memcpy(packed + (size_t)t * d, values + t * stride + (h / per_group) * d, sizeof(float) * d);
        // the output in slices of a compile-time number of vectors, which then stay in registers
        // over the chunk's values (a run-time count left them in memory: 3x slower)
        float* oh = out + (size_t)h * d;
        for (int i0 = 0; i0 < d;) {
            const int left = (d - i0) / Vec::W;
            if (left >= 16 && Vec::kSlice >= 16) i0 += out_slice<Vec, 16>(p, packed + i0, d, S, oh + i0);
            else if (left >= 8 && Vec::kSlice >= 8) i0 += out_slice<Vec, 8>(p, packed + i0, d, S, oh + i0);
            else if (left >= 4) i0 += out_slice<Vec, 4>(p, packed + i0, d, S, oh + i0);
            else i0 += out_slice<Vec, 1>(p, packed + i0, d, S, oh + i0);
        }
    }
}

}  // namespace
