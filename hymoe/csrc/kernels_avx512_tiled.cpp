// AVX512-VNNI batch kernels over the tiles of tiles.h: one zmm holds a code quad of all 16 rows,
// so a block of 32 weights is 8 vpdpbusd per token (activation bytes broadcast from memory) and the
// float work once per block. Compiled with the AVX512 flags only; no C++ library (common.h).
// At batch 512 that is twice the per-row kernels' GFLOP/s (Q8_0, qwen3 shape).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "simd_avx512.h"
#include "tiles.h"
#include "lowbit_iq2.h"
#include "lowbit_iq3.h"
#include "lowbit_kquants.h"
#include "lowbit_legacy.h"

namespace {

struct Avx512 {
    static const int kNT = 8;  // tokens per pass: 2 x 8 accumulators stay in registers

    static void transpose(const uint8_t* stage, uint8_t* dst) { transpose16x8_dwords(stage, 256, dst); }

    // out[t][0..15] = the 16 tile rows against NT tokens. aq[t]: int8 activations in k order; ad[t][b],
    // ads[t][b]: per block of kBlock their scale and scale * sum.
    template <int NT, int kBlock>
    static void tokens(const Tile& tile, int blocks, const int8_t* const* aq, const float* const* ad,
                     const float* const* ads, float* out, size_t out_stride, NextTile& next) {
        __m512 acc[NT];
        for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
        for (int b = 0; b < blocks; b++) {
            next.step();
            const uint8_t* cb = tile.codes + (size_t)b * kBlock * kLanes;
            __m512i p[NT];
            for (int t = 0; t < NT; t++) p[t] = _mm512_setzero_si512();
            for (int q = 0; q < kBlock / 4; q++) {
                const __m512i wv = _mm512_load_si512((const void*)(cb + 64 * q));
                for (int t = 0; t < NT; t++) {
                    int32_t a4;
                    memcpy(&a4, aq[t] + kBlock * b + 4 * q, 4);
                    p[t] = _mm512_dpbusd_epi32(p[t], wv, _mm512_set1_epi32(a4));
                }
            }
            const __m512 sc = _mm512_load_ps(tile.sc + (size_t)b * kLanes), mn = _mm512_load_ps(tile.mn + (size_t)b * kLanes);
            for (int t = 0; t < NT; t++) {
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[t]), _mm512_mul_ps(sc, _mm512_set1_ps(ad[t][b])), acc[t]);
                acc[t] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(ads[t][b]), acc[t]);
            }
        }
        for (int t = 0; t < NT; t++) _mm512_storeu_ps(out + t * out_stride, acc[t]);
    }
};

template <class D>
constexpr RowsFn lowbit_tile() {  // the low-bit formats (lowbit.h), per-32 or per-256 activations (kAct256)
    return rows_tiled16<Avx512, D, Act256Of<D>::value>;
}

}  // namespace

const RowsFn avx512::tile_q8_0 = rows_tiled16<Avx512, DQ8_0, false>;
const RowsFn avx512::tile_q4_0 = rows_tiled16<Avx512, DQ4_0, false>;
const RowsFn avx512::tile_iq1_s = rows_tiled16<Avx512, DIQ1_S, false>;
const RowsFn avx512::tile_q4_k = rows_tiled16<Avx512, DQ45<false>, true>;
const RowsFn avx512::tile_q4_k_g4 = rows_tiled16<Avx512, DQ45<false, true>, true>;
const RowsFn avx512::tile_q5_k = rows_tiled16<Avx512, DQ45<true>, true>;
const RowsFn avx512::tile_tq2_0 = rows_tiled16<Avx512, DTQ2_0, true>;
const RowsFn avx512::tile_tq1_0 = rows_tiled16<Avx512, DTQ1_0, true>;
const RowsFn avx512::tile_q6_k = rows_tiled16<Avx512, DQ6_K, true>;
const RowsFn avx512::tile_q4_1 = lowbit_tile<DQ4_1>();
const RowsFn avx512::tile_q5_0 = lowbit_tile<DQ5_0>();
const RowsFn avx512::tile_q5_1 = lowbit_tile<DQ5_1>();
const RowsFn avx512::tile_iq4_nl = lowbit_tile<DIQ4_NL>();
const RowsFn avx512::tile_q2_k = lowbit_tile<DQ2_K>();
const RowsFn avx512::tile_q3_k = lowbit_tile<DQ3_K>();
const RowsFn avx512::tile_iq4_xs = lowbit_tile<DIQ4_XS>();
const RowsFn avx512::tile_iq2_xxs = lowbit_tile<DIQ2_XXS>();
const RowsFn avx512::tile_iq2_xs = lowbit_tile<DIQ2_XS>();
const RowsFn avx512::tile_iq2_s = lowbit_tile<DIQ2_S>();
const RowsFn avx512::tile_iq3_xxs = lowbit_tile<DIQ3_XXS>();
const RowsFn avx512::tile_iq3_s = lowbit_tile<DIQ3_S>();
const RowsFn avx512::tile_iq1_m = lowbit_tile<DIQ1_M>();
#endif
