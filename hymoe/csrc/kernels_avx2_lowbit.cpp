// AVX2 per-row kernels of the low-bit and older formats (lowbit.h): each 256-weight unit of a row is
// decoded once by the format's decoder (tiles.h's interface) for up to 4 tokens, then dotted with
// vpmaddubsw + vpmaddwd, the float work once per block. Codes of 128 and more (the IQ formats'
// signed values + 128) take the weight's sign onto the activation, as the Q8_0 kernels do.
// Compiled with the AVX2 flags only; no C++ library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_iq2.h"
#include "lowbit_iq3.h"
#include "lowbit_kquants.h"
#include "lowbit_legacy.h"

namespace {

const int kAhead = 4096;  // bytes a row stream is fetched ahead (as the other AVX2 kernels)

// 32 codes against 32 int8 activations -> 8 int32 lanes, lane l summing weights 4l..4l+3
template <bool kWide>
inline __m256i dot32(__m256i codes, __m256i a) {
    __m256i p;
    if (kWide) {  // code - 128 as a signed byte; |w| x sign(a, w) keeps vpmaddubsw's pairs in range
        const __m256i s = _mm256_xor_si256(codes, _mm256_set1_epi8((char)0x80));
        p = _mm256_maddubs_epi16(_mm256_abs_epi8(s), _mm256_sign_epi8(a, s));
    } else {
        p = _mm256_maddubs_epi16(codes, a);
    }
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

template <class D, int NT>
void rows_group(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int n, float* out,
                size_t out_stride) {
    const bool kWide = D::kMaxCode > 127;
    const bool kAct256 = Act256Of<D>::value;  // per-256 activations (lowbit.h)
    ActView a[NT];
    for (int t = 0; t < NT; t++) a[t] = act_view(acts[t], n);
    alignas(32) uint8_t codes[256];
    float sc[16], mn[16];
    for (int r = 0; r < nrows; r++) {
        const uint8_t* row = w + (size_t)r * row_bytes;
        __m256 acc[NT];
        float macc[NT];
        for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps(), macc[t] = 0.f;
        for (int u = 0; u < n / 256; u++) {
            const uint8_t* blk = row + (size_t)u * D::kBytes;
            for (int l = 0; l < D::kBytes; l += 64) _mm_prefetch((const char*)blk + kAhead + l, _MM_HINT_T0);
            D::decode(blk, codes, sc, mn, 1);
            if (kWide)  // the codes go in as code - 128 (dot32)
                for (int j = 0; j < 256 / D::kBlock; j++) mn[j] -= 128.f * sc[j];
            for (int j = 0; j < 8; j++) {  // 32 weights: one block of 32, or two of 16
                const int k0 = 256 * u + 32 * j;
                const __m256i c = _mm256_load_si256((const __m256i*)(codes + 32 * j));
                const __m256 s = D::kBlock == 32 ? _mm256_set1_ps(sc[j])
                                                 : _mm256_set_m128(_mm_set1_ps(sc[2 * j + 1]), _mm_set1_ps(sc[2 * j]));
                for (int t = 0; t < NT; t++) {
                    const __m256i p = dot32<kWide>(c, _mm256_loadu_si256((const __m256i*)((kAct256 ? a[t].qk : a[t].qs) + k0)));
                    const float da = kAct256 ? a[t].dk[u] : a[t].d[k0 / 32];
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(s, _mm256_set1_ps(da)), acc[t]);
                    float m;
                    if (kAct256) {
                        const int16_t* b16 = a[t].bk16 + k0 / 16;
                        m = D::kBlock == 32 ? mn[j] * (float)a[t].bk32[k0 / 32]
                                            : mn[2 * j] * (float)b16[0] + mn[2 * j + 1] * (float)b16[1];
                    } else {
                        const int32_t* s16 = a[t].sum16 + k0 / 16;
                        m = D::kBlock == 32 ? mn[j] * (float)(s16[0] + s16[1])
                                            : mn[2 * j] * (float)s16[0] + mn[2 * j + 1] * (float)s16[1];
                    }
                    macc[t] += da * m;
                }
            }
        }
        for (int t = 0; t < NT; t++) {
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[t]), _mm256_extractf128_ps(acc[t], 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            out[t * out_stride + r] = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h))) - macc[t];
        }
    }
}

template <class D>
int rows_decoded(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n,
                 float* out, size_t out_stride) {
    if (n % 256) return 0;
    int t = 0;
    for (; t + 4 <= ntok; t += 4) rows_group<D, 4>(w, row_bytes, nrows, acts + t, n, out + t * out_stride, out_stride);
    for (; t < ntok; t++) rows_group<D, 1>(w, row_bytes, nrows, acts + t, n, out + t * out_stride, out_stride);
    return nrows;
}

}  // namespace

const RowsFn avx2::rows_q4_1 = rows_decoded<DQ4_1>;
const RowsFn avx2::rows_q5_0 = rows_decoded<DQ5_0>;
const RowsFn avx2::rows_q5_1 = rows_decoded<DQ5_1>;
const RowsFn avx2::rows_iq4_nl = rows_decoded<DIQ4_NL>;
const RowsFn avx2::rows_q2_k = rows_decoded<DQ2_K>;
const RowsFn avx2::rows_q3_k = rows_decoded<DQ3_K>;
const RowsFn avx2::rows_iq4_xs = rows_decoded<DIQ4_XS>;
const RowsFn avx2::rows_iq2_xxs = rows_decoded<DIQ2_XXS>;
const RowsFn avx2::rows_iq2_xs = rows_decoded<DIQ2_XS>;
const RowsFn avx2::rows_iq2_s = rows_decoded<DIQ2_S>;
const RowsFn avx2::rows_iq3_xxs = rows_decoded<DIQ3_XXS>;
const RowsFn avx2::rows_iq3_s = rows_decoded<DIQ3_S>;
const RowsFn avx2::rows_iq1_m = rows_decoded<DIQ1_M>;
#endif
