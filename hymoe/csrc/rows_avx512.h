// The AVX512 per-row kernel of the quantized formats, shared by kernels_avx512.cpp and the low-bit
// formats' files (kernels_avx512_<group>.cpp): a format is a struct F that turns a unit of kSU
// weights into chunks of 64 unsigned byte codes with a float scale per lane (4 weights; kUnitScales:
// the unit's block scales by scales() instead, below), and rows_tile<F> runs the integer dot
// products for NR rows x NT tokens:
//   int32 lanes  p = dpbusd(-c * sum4(a), wq, a)      (c = 1 << kShift: the code offset; -1: none)
//   float acc   += cvt(p) * ws * d_a
// minus, per unit, mins() x the per-32 activation sums (kMins) or mins16() x the per-16 ones (kMins16).
// Include only from files compiled with the AVX512 flags; no C++ library (common.h).
#pragma once
#include "lowbit.h"
#include "simd_avx512.h"

namespace {

// ---- activations: the portable layout, then per 64 values: 16 lane scales, 16 lane sums, then
// (rows of 256s) the per-256 values in Q4_K/Q5_K chunk order; see extras_at and paired_at
struct Act {
    const int8_t* qs;
    const float* dexp;    // per 64 values, 16 floats: lane l holds the scale of block (l / 8)
    const int32_t* ns4;   // per 4 values: minus their sum (seeds the code-offset correction)
    const float* dsum;    // per block of 32: scale * sum (for mins and deltas)
};
inline Act act_of(const void* p, int n) {
    const uint8_t* b = (const uint8_t*)p;
    const uint8_t* e = b + extras_at(n);
    return Act{(const int8_t*)b, (const float*)e, (const int32_t*)(e + n), (const float*)(e + 2 * (size_t)n)};
}

template <class F>
constexpr auto mins16_of(int) -> decltype(F::kMins16) { return F::kMins16; }
template <class F>
constexpr bool mins16_of(...) { return false; }
// kUnitScales: the format's lane scales are its unit's 8 block scales (lanes 0-7 of scales()), chunk c
// taking blocks 2c and 2c + 1, as the activations' per-32 scales: the kernel multiplies the two once
// a unit (one product for 4 chunks) and picks each chunk's lanes from the product
template <class F>
constexpr auto unit_scales_of(int) -> decltype(F::kUnitScales) { return F::kUnitScales; }
template <class F>
constexpr bool unit_scales_of(...) { return false; }

// per 16 activations of unit u (256 values): scale * sum, for the mins of blocks of 16
inline __m512 dsum16(const ActView& v, int u) {
    const __m512i half = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512 d = _mm512_permutexvar_ps(half, _mm512_castps256_ps512(_mm256_loadu_ps(v.d + 8 * u)));
    return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_loadu_si512((const void*)(v.sum16 + 16 * u))));
}

template <class F, int NR, int NT>
void rows_tile(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int n, float* out,
               size_t out_stride) {
    constexpr bool kMins16 = mins16_of<F>(0), kUnit = unit_scales_of<F>(0);
    Act a[NT];
    ActView av[NT];
    for (int t = 0; t < NT; t++) a[t] = act_of(acts[t], n), av[t] = act_view(acts[t], n);
    const int units = n / F::kSU;
    const Ahead fetch(w, nrows * row_bytes, rows_ahead(row_bytes, NR));
    for (int r = 0; r + NR <= nrows; r += NR) {
        const uint8_t* row = w + r * row_bytes;
        __m512 acc[NR][NT];
        __m256 macc[NR][NT];
        __m512 macc16[NR][NT];
        for (int i = 0; i < NR; i++)
            for (int t = 0; t < NT; t++) {
                acc[i][t] = _mm512_setzero_ps();
                macc[i][t] = _mm256_setzero_ps();
                macc16[i][t] = _mm512_setzero_ps();
            }
        F fb[F::kPrepAhead ? 2 : 1][NR];
        if (F::kPrepAhead) {
            fetch(pass_at(row, NR, 0, F::kBytes), NR * F::kBytes);
            for (int i = 0; i < NR; i++) fb[0][i].prep(row + i * row_bytes);
        }
        for (int u = 0; u < units; u++) {
            F* f = fb[F::kPrepAhead ? u & 1 : 0];
            // kPrepAhead: the next block is prepared before this one is computed, so what prep()
            // stored has left the store queue when the chunks load it
            const int up = F::kPrepAhead ? u + 1 : u;
            if (up < units) {
                fetch(pass_at(row, NR, up, F::kBytes), NR * F::kBytes);
                for (int i = 0; i < NR; i++) {
                    const uint8_t* blk = row + i * row_bytes + up * F::kBytes;
                    fb[F::kPrepAhead ? up & 1 : 0][i].prep(blk);
                }
            }
            __m512 sd[NR][NT];  // kUnit: lanes 0-7, the 8 weight block scales x the token's activation ones
            if constexpr (kUnit)
                for (int t = 0; t < NT; t++) {
                    const __m512 da8 = _mm512_castps256_ps512(_mm256_loadu_ps(av[t].d + 8 * u));
                    for (int i = 0; i < NR; i++) sd[i][t] = _mm512_mul_ps(f[i].scales(), da8);
                }
            for (int c = 0; c < F::kSU / 64; c++) {
                __m512 ws[NR];
                __m512i wq[NR];
                for (int i = 0; i < NR; i++) wq[i] = f[i].chunk(c, ws[i]);
                const int lo = u * F::kSU + 32 * F::blk_lo(c), hi = u * F::kSU + 32 * F::blk_hi(c);
                const bool is_natural = hi == lo + 32;
                for (int t = 0; t < NT; t++) {
                    __m512i seed = _mm512_setzero_si512();
                    if (F::kShift >= 0)
                        seed = _mm512_slli_epi32(load_pair(a[t].ns4 + lo / 4, a[t].ns4 + hi / 4, is_natural),
                                                 F::kShift < 0 ? 0 : F::kShift);
                    const __m512i aq = load_pair(a[t].qs + lo, a[t].qs + hi, is_natural);
                    __m512 da = _mm512_setzero_ps();  // the activations' lane scales (kUnit: in sd)
                    if constexpr (!kUnit)
                        da = _mm512_castsi512_ps(load_pair(a[t].dexp + lo / 4, a[t].dexp + hi / 4, is_natural));
                    for (int i = 0; i < NR; i++) {
                        __m512i p = _mm512_dpbusd_epi32(seed, wq[i], aq);
                        __m512 s;
                        if constexpr (kUnit) s = lanes_from(sd[i][t], 2 * c, 2 * c + 1);
                        else s = _mm512_mul_ps(ws[i], da);  // ws: what chunk() set
                        acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[i][t]);
                    }
                }
            }
            if (F::kMins)
                for (int t = 0; t < NT; t++) {
                    const __m256 ds = _mm256_loadu_ps(a[t].dsum + u * 8);
                    for (int i = 0; i < NR; i++) macc[i][t] = _mm256_fmadd_ps(f[i].mins(), ds, macc[i][t]);
                }
            if constexpr (kMins16)
                for (int t = 0; t < NT; t++) {
                    const __m512 ds = dsum16(av[t], u);
                    for (int i = 0; i < NR; i++) macc16[i][t] = _mm512_fmadd_ps(f[i].mins16(), ds, macc16[i][t]);
                }
        }
        for (int t = 0; t < NT; t++) {
            __m512 sums[NR];
            for (int i = 0; i < NR; i++)
                sums[i] = kMins16  ? _mm512_sub_ps(acc[i][t], macc16[i][t])
                          : F::kMins ? add_low8(acc[i][t], _mm256_sub_ps(_mm256_setzero_ps(), macc[i][t]))
                                     : acc[i][t];
            store_sums<NR>(sums, out + t * out_stride + r);
        }
    }
}

template <class F, int NR, int NT>
struct QTile {
    static void run(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int n, float* out,
                    size_t out_stride) {
        rows_tile<F, NR, NT>(w, row_bytes, nrows, acts, n, out, out_stride);
    }
};

template <class F>
int rows_q(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
           size_t out_stride) {
    if (n % F::kSU) return 0;
    rows_tiled<QTile, F>(w, row_bytes, nrows, acts, ntok, n, out, out_stride);
    return nrows;
}

}  // namespace
