// F32, F16 and BF16 expert weights in batches on AVX2 + FMA + F16C, on AVX512 CPUs too (BF16 there
// where the vdpbf16ps tile does not take it). The per-row kernels convert every weight for every
// token and stream each row once per token. Here 16 rows at a time are converted to f32 once into
// a tile of [n][16] (lane i = row i, two ymm per k), and each token's activation is broadcast: 2
// FMAs per k for 16 rows and one token, the tile in L2 for all the expert's tokens. At batch 512
// that is 4.5x the AVX2 per-row kernels' GFLOP/s for BF16, and more than AVX512's per-row kernels.
// Compiled with the AVX2 flags only; no C++ library (common.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "simd_avx2.h"

namespace {

const int kRows = 16;            // rows per tile: two ymm of 8 lanes
const int kNT = 6;               // tokens per pass at most: 2 x 6 accumulators, 2 weights, 1 broadcast

thread_local ScratchBuffer t_float;  // per thread: the tile, n x 16 floats

template <int FMT>
inline __m256i load8_bits(const uint8_t* row, int k) {  // weights k..k+7 of a row, as f32 bits
    if (FMT == F32) return _mm256_loadu_si256((const __m256i*)((const float*)row + k));
    const __m128i h = _mm_loadu_si128((const __m128i*)((const uint16_t*)row + k));
    if (FMT == F16) return _mm256_castps_si256(_mm256_cvtph_ps(h));
    return _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);  // BF16
}

// out[t][0..15] for NT tokens: acc += tile[k] x x_t[k], broadcast
template <int NT>
void tokens(const float* tile, int n, const float* const* x, float* out, size_t out_stride, NextTile& stream) {
    NextTile next = stream;
    __m256 lo[NT], hi[NT];  // rows 0-7, 8-15
    for (int t = 0; t < NT; t++) lo[t] = hi[t] = _mm256_setzero_ps();
    for (int k0 = 0; k0 < n; k0 += 8) {
        next.step();
#pragma GCC unroll 8
        for (int k = k0; k < k0 + 8; k++) {
            const __m256 w0 = _mm256_load_ps(tile + 16 * (size_t)k), w1 = _mm256_load_ps(tile + 16 * (size_t)k + 8);
            for (int t = 0; t < NT; t++) {
                const __m256 a = _mm256_broadcast_ss(x[t] + k);
                lo[t] = _mm256_fmadd_ps(w0, a, lo[t]);
                hi[t] = _mm256_fmadd_ps(w1, a, hi[t]);
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        _mm256_storeu_ps(out + t * out_stride, lo[t]);
        _mm256_storeu_ps(out + t * out_stride + 8, hi[t]);
    }
    stream = next;
}

// the whole tiles of rows [0, nrows); returns their rows (0: a shape the tile does not take)
template <int FMT>
int rows_float(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
               size_t out_stride) {
    float* tile = n % 8 || nrows < kRows ? nullptr : (float*)t_float.reserve((size_t)n * kRows * 4);
    if (!tile) return 0;
    const float* const* x = (const float* const*)acts;  // f32 activations (BF16: rounded to bf16 by the job)
    const int main = nrows / kRows * kRows, groups = (ntok + kNT - 1) / kNT;
    TiledRange range(w, nrows * row_bytes, main * row_bytes, row_bytes * kRows);
    for (int r = 0; r < main; r += kRows) {
        const uint8_t* rows = w + (size_t)r * row_bytes;
        NextTile next = range.next_of(rows, n / 8 * groups);
        for (int k = 0; k < n; k += 8)  // 8 weights of 8 rows per transpose
            for (int half = 0; half < 2; half++) {
                __m256i v[8], q[8];
                for (int i = 0; i < 8; i++) v[i] = load8_bits<FMT>(rows + (8 * half + i) * row_bytes, k);
                transpose8x8_epi32(v, q);
                for (int j = 0; j < 8; j++) _mm256_store_si256((__m256i*)(tile + 16 * (size_t)(k + j) + 8 * half), q[j]);
            }
        balanced_token_groups<kNT>(ntok, [&](auto nt, int t) {
            tokens<decltype(nt)::value>(tile, n, x + t, out + t * out_stride + r, out_stride, next);
        });
    }
    range.hand_over();
    return main;
}

}  // namespace

const RowsFn avx2::tile_f32 = rows_float<F32>;
const RowsFn avx2::tile_f16 = rows_float<F16>;
const RowsFn avx2::tile_bf16 = rows_float<BF16>;
#endif
