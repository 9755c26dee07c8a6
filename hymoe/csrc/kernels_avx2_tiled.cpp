// AVX2 batch kernels over the tiles of tiles.h, for x86-64 CPUs without AVX512 (AMD Zen 2/3, older
// Intel): a tile's code quad of 16 rows is two ymm, and without VNNI the integer dot is vpmaddubsw
// (byte pairs -> int16) then vpmaddwd (-> int32). The int16 pair sums only hold codes below 128:
// 2 x 63 x 127 fits, Q8_0's codes (q + 128) would saturate, so Q8_0 has a signed variant.
// Compiled with the AVX2 flags only; no C++ library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "simd_avx2.h"
#include "tiles.h"
#include "lowbit_iq2.h"
#include "lowbit_iq3.h"
#include "lowbit_kquants.h"
#include "lowbit_legacy.h"

namespace {

// kSigned (Q8_0): the tile holds signed values (DQ8_0T<true>) and each product takes the weight's
// sign onto the broadcast activation (|w| x sign(a, w), as ggml's AVX2 Q8_0 dot): pair sums stay
// below 2 x 128 x 127, so one vpmaddubsw per quad and 2 tokens per pass (the |w| take registers).
// Otherwise codes are below 64 and two quads share one int16 sum: 4 x 63 x 127 < 32768.
template <bool kSigned, bool kMins = !kSigned>
struct Avx2 {
    static const int kNT = kSigned ? 2 : 3;  // 4 x kNT accumulators + weights + constants in 16 ymm

    // 16 rows x 32 code bytes -> vector q = [rows 0-7 | rows 8-15] of bytes 4q..4q+3 (as the AVX512
    // tile): an 8x8 dword transpose for each half
    static void transpose(const uint8_t* stage, uint8_t* dst) {
        for (int half = 0; half < 2; half++) {
            __m256i r[8], out[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_si256((const __m256i*)(stage + 256 * (8 * half + i)));
            transpose8x8_epi32(r, out);
            for (int q = 0; q < 8; q++) _mm256_storeu_si256((__m256i*)(dst + 64 * q + 32 * half), out[q]);
        }
    }

    // out[t][0..15] = the 16 tile rows against NT tokens (see Avx512::tokens)
    template <int NT, int kBlock>
    static void tokens(const Tile& tile, int blocks, const int8_t* const* aq, const float* const* ad,
                       const float* const* ads, float* out, size_t out_stride, NextTile& next) {
        const __m256i ones = _mm256_set1_epi16(1);
        __m256 acc[2][NT];
        for (int h = 0; h < 2; h++)
            for (int t = 0; t < NT; t++) acc[h][t] = _mm256_setzero_ps();
        for (int b = 0; b < blocks; b++) {
            next.step();
            const uint8_t* cb = tile.codes + (size_t)b * kBlock * kLanes;
            __m256i p[2][NT];
            for (int h = 0; h < 2; h++)
                for (int t = 0; t < NT; t++) p[h][t] = _mm256_setzero_si256();
            for (int q = 0; q < kBlock / 4; q += kSigned ? 1 : 2) {
                __m256i w[2], v[2];  // quad q (and q + 1) of rows 0-7 and 8-15
                for (int h = 0; h < 2; h++) {
                    w[h] = _mm256_load_si256((const __m256i*)(cb + 64 * q + 32 * h));
                    v[h] = kSigned ? _mm256_abs_epi8(w[h]) : _mm256_load_si256((const __m256i*)(cb + 64 * q + 64 + 32 * h));
                }
                for (int t = 0; t < NT; t++) {
                    const int8_t* a = aq[t] + kBlock * b + 4 * q;
                    int32_t a0, a1 = 0;
                    memcpy(&a0, a, 4);
                    if (!kSigned) memcpy(&a1, a + 4, 4);  // the next quad's bytes
                    const __m256i x0 = _mm256_set1_epi32(a0), x1 = _mm256_set1_epi32(a1);
                    for (int h = 0; h < 2; h++) {
                        const __m256i s16 = kSigned ? _mm256_maddubs_epi16(v[h], _mm256_sign_epi8(x0, w[h]))
                                                    : _mm256_add_epi16(_mm256_maddubs_epi16(w[h], x0),
                                                                       _mm256_maddubs_epi16(v[h], x1));
                        p[h][t] = _mm256_add_epi32(p[h][t], _mm256_madd_epi16(s16, ones));
                    }
                }
            }
            for (int h = 0; h < 2; h++) {
                const __m256 sc = _mm256_load_ps(tile.sc + (size_t)b * kLanes + 8 * h);
                const __m256 mn = _mm256_load_ps(tile.mn + (size_t)b * kLanes + 8 * h);
                for (int t = 0; t < NT; t++) {
                    acc[h][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[h][t]), _mm256_mul_ps(sc, _mm256_set1_ps(ad[t][b])),
                                                acc[h][t]);
                    if (kMins) acc[h][t] = _mm256_fnmadd_ps(mn, _mm256_set1_ps(ads[t][b]), acc[h][t]);
                }
            }
        }
        for (int t = 0; t < NT; t++)
            for (int h = 0; h < 2; h++) _mm256_storeu_ps(out + t * out_stride + 8 * h, acc[h][t]);
    }
};

// The low-bit formats (lowbit.h): codes below 64 as codes, larger ones as signed bytes
template <class D>
constexpr RowsFn lowbit_tile() {
    if constexpr (D::kMaxCode < 64) return rows_tiled16<Avx2<false>, D, Act256Of<D>::value>;
    else return rows_tiled16<Avx2<true, true>, Signed<D>, Act256Of<D>::value>;
}

}  // namespace

// Q8_0 as signed bytes (its codes q + 128 would saturate vpmaddubsw), the others as codes
const RowsFn avx2::tile_q8_0 = rows_tiled16<Avx2<true>, DQ8_0T<true>, false>;
const RowsFn avx2::tile_q4_0 = rows_tiled16<Avx2<false>, DQ4_0, false>;
const RowsFn avx2::tile_iq1_s = rows_tiled16<Avx2<false>, DIQ1_S, false>;
const RowsFn avx2::tile_q4_k = rows_tiled16<Avx2<false>, DQ45<false>, true>;
const RowsFn avx2::tile_q5_k = rows_tiled16<Avx2<false>, DQ45<true>, true>;
const RowsFn avx2::tile_tq2_0 = rows_tiled16<Avx2<false>, DTQ2_0, true>;
const RowsFn avx2::tile_tq1_0 = rows_tiled16<Avx2<false>, DTQ1_0, true>;
const RowsFn avx2::tile_q6_k = rows_tiled16<Avx2<false>, DQ6_K, true>;
const RowsFn avx2::tile_q4_1 = lowbit_tile<DQ4_1>();
const RowsFn avx2::tile_q5_0 = lowbit_tile<DQ5_0>();
const RowsFn avx2::tile_q5_1 = lowbit_tile<DQ5_1>();
const RowsFn avx2::tile_iq4_nl = lowbit_tile<DIQ4_NL>();
const RowsFn avx2::tile_q2_k = lowbit_tile<DQ2_K>();
const RowsFn avx2::tile_q3_k = lowbit_tile<DQ3_K>();
const RowsFn avx2::tile_iq4_xs = lowbit_tile<DIQ4_XS>();
const RowsFn avx2::tile_iq2_xxs = lowbit_tile<DIQ2_XXS>();
const RowsFn avx2::tile_iq2_xs = lowbit_tile<DIQ2_XS>();
const RowsFn avx2::tile_iq2_s = lowbit_tile<DIQ2_S>();
const RowsFn avx2::tile_iq3_xxs = lowbit_tile<DIQ3_XXS>();
const RowsFn avx2::tile_iq3_s = lowbit_tile<DIQ3_S>();
const RowsFn avx2::tile_iq1_m = lowbit_tile<DIQ1_M>();
#endif
