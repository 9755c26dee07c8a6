// AVX512 per-row kernels of IQ3_XXS, IQ3_S, IQ1_M (lowbit.h): each format's own F struct (rows_avx512.h). Compiled
// with the AVX512 flags only; no C++ library (common.h).
//
// The IQ3 formats are 64 codebook lookups of 4 bytes per 256 weights into a 1 or 2 KiB grid of
// magnitudes: a chunk's 16 are scalar loads paired into qwords and assembled into a vector (Zen 4:
// IQ3_S 4.6 GB/s of blocks per core in cache, against 3.7 with one 16-lane gather per chunk). The
// lookups, not the arithmetic, bound these kernels at decode: in cache one core runs IQ3_XXS at
// ~3.9 GB/s and IQ3_S ~4.5 (Q4_1: 11.8), so two cores stay near 7-9 GB/s, well under DRAM's 30-50.
// The signs, a bit per weight, are a 64-bit mask that turns offset + m into offset - m in one
// masked subtract. The offset is a power of 2 (64, 16), so the integer kernel takes it as kShift and no mins are needed. IQ1_M looks up
// IQ1_S's codebook (iq1s.h) as IQ1_S does; its per-8 delta is folded into the codes (lowbit_iq3.h).
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_iq3.h"
#include "rows_avx512.h"

namespace {

// the grid entries of a chunk's 16 indices (widened to 16 bits in prep), two per qword
static inline __m512i iq3_lookup16(const uint16_t* i16, const uint32_t* grid) {
    uint64_t q[4];
    memcpy(q, i16, 32);
    auto pair = [grid](uint64_t v, int k) -> long long {
        return (long long)(grid[(v >> 16 * k) & 0xFFFF] | (uint64_t)grid[(v >> (16 * k + 16)) & 0xFFFF] << 32);
    };
    return _mm512_set_epi64(pair(q[3], 2), pair(q[3], 0), pair(q[2], 2), pair(q[2], 0), pair(q[1], 2), pair(q[1], 0),
                            pair(q[0], 2), pair(q[0], 0));
}

// codes offset +- m: the bits of `signs` (one per byte) pick the minus
static inline __m512i iq3_apply_signs(__m512i m, uint64_t signs, int offset) {
    const __m512i o = _mm512_set1_epi8((char)offset);
    return _mm512_mask_sub_epi8(_mm512_add_epi8(o, m), (__mmask64)signs, o, m);
}

// IQ3_XXS: codes 64 +- grid (kShift 6); per 32 a word of four 7-bit sign fields (the 8th sign their
// parity) and a 4-bit scale
struct FIQ3_XXS {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ3_XXS), kShift = 6;
    static const bool kMins = false, kPrepAhead = true;  // signs are stored: read a unit later
    __m512 db;                      // lanes 0-7: the 8 blocks' scales
    alignas(32) uint64_t signs[4];  // byte 4 ib + l: the signs of weights 32 ib + 8 l .. + 7
    alignas(64) uint16_t idx[64];   // the indices widened: 16-bit loads feed the lookups best
    void prep(const uint8_t* p) {
        const BlockIQ3_XXS* b = (const BlockIQ3_XXS*)p;
        for (int h = 0; h < 2; h++)
            _mm512_store_si512((void*)(idx + 32 * h), _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(b->qs + 32 * h))));
        const __m256i aux = _mm256_loadu_si256((const __m256i*)(b->qs + 64));
        const __m256 ls = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(aux, 28)), _mm256_set1_ps(0.5f));
        db = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(0.5f * h2f(b->d)), ls));
        _mm256_store_si256((__m256i*)signs, iq3xxs_signs(b->qs + 64));
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes_from(db, 2 * c, 2 * c + 1);
        return iq3_apply_signs(iq3_lookup16(idx + 16 * c, kIq3xxsGrid), signs[c], 64);
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

// IQ3_S: codes 16 +- grid (kShift 4); 9-bit indices (qs and a qh bit), a sign bit per weight, a
// 4-bit scale per 32
struct FIQ3_S {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ3_S), kShift = 4;
    static const bool kMins = false, kPrepAhead = true;  // indices are stored: read a unit later
    const BlockIQ3_S* b;
    __m512 db;                     // lanes 0-7: the 8 blocks' scales d (1 + 2 s)
    alignas(64) uint16_t idx[64];  // the 9-bit indices, computed in vectors
    void prep(const uint8_t* p) {
        b = (const BlockIQ3_S*)p;
        uint32_t s4;
        memcpy(&s4, b->scales, 4);  // nibble j: block j
        const __m256i nib = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)s4), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                             _mm256_set1_epi32(15));
        const __m256 odd = _mm256_cvtepi32_ps(_mm256_or_si256(_mm256_slli_epi32(nib, 1), _mm256_set1_epi32(1)));
        db = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(h2f(b->d)), odd));
        uint64_t qh;
        memcpy(&qh, b->qh, 8);  // bit i: the 9th bit of index i
        for (int h = 0; h < 2; h++) {
            const __m512i lo = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)(b->qs + 32 * h)));
            _mm512_store_si512((void*)(idx + 32 * h), _mm512_mask_add_epi16(lo, (__mmask32)(qh >> 32 * h), lo, _mm512_set1_epi16(256)));
        }
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes_from(db, 2 * c, 2 * c + 1);
        uint64_t sg;
        memcpy(&sg, b->signs + 8 * c, 8);
        return iq3_apply_signs(iq3_lookup16(idx + 16 * c, kIq3sGrid), sg, 16);
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

// IQ1_M: codes 8 (grid + 1) + 1 + 8 delta (0..18), scale dl / 8 per 16, min 9 dl / 8 (kMins16).
// The codebook gives grid + 1 per 8 weights (a qword); times 8 is a shift and the delta a masked
// qword add, so a chunk costs IQ1_S's lookups and three operations more.
struct FIQ1_M {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ1_M), kShift = -1;
    static const bool kMins = false, kMins16 = true, kPrepAhead = true;
    __m512 dl;                     // lane j: dl / 8 of block j (16 weights)
    __mmask32 plus;                // bit g: delta of group g is +1/8 (its codes get + 2)
    alignas(64) uint16_t idx[32];  // the 32 codebook indices
    void prep(const uint8_t* p) {
        const BlockIQ1_M* b = (const BlockIQ1_M*)p;
        // lane g (16-bit): qh[g / 2], its nibble g % 2 shifted down
        const __m256i qh2 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)b->qh));  // qh[i] in lane i
        const __m512i h = _mm512_permutexvar_epi16(
            _mm512_set_epi16(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8,
                             7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0),
            _mm512_castsi256_si512(qh2));
        const __m512i nib = _mm512_srlv_epi16(h, _mm512_set1_epi32(4 << 16));  // odd lanes >> 4
        const __m512i lo = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)b->qs));
        const __m512i hi3 = _mm512_slli_epi16(_mm512_and_si512(nib, _mm512_set1_epi16(7)), 8);
        _mm512_store_si512((void*)idx, _mm512_or_si512(lo, hi3));
        plus = _mm512_testn_epi16_mask(nib, _mm512_set1_epi16(8));
        // scales: lane j = 3-bit field j % 4 of word j / 4, dl = d (2 s + 1)
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_castsi128_si256(_mm_loadl_epi64((const __m128i*)b->scales)));
        const __m512i s = _mm512_and_si512(
            _mm512_srlv_epi32(_mm512_permutexvar_epi32(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), w),
                              _mm512_set_epi32(9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0, 9, 6, 3, 0)),
            _mm512_set1_epi32(7));
        const __m512 odd = _mm512_cvtepi32_ps(_mm512_or_si512(_mm512_slli_epi32(s, 1), _mm512_set1_epi32(1)));
        dl = _mm512_mul_ps(_mm512_set1_ps(0.125f * h2f(iq1m_d(b))), odd);
    }
    __m512i chunk(int c, __m512& s) const {
        const __m512i blk = _mm512_add_epi32(_mm512_set1_epi32(4 * c),
                                             _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
        s = _mm512_permutexvar_ps(blk, dl);
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(iq1s_codes32(idx + 8 * c)), iq1s_codes32(idx + 8 * c + 4), 1);
        v = _mm512_slli_epi64(v, 3);  // bytes of 0..2: no carry out of a byte
        return _mm512_mask_add_epi64(v, (__mmask8)(plus >> 8 * c), v, _mm512_set1_epi64(0x0202020202020202LL));
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
    __m512 mins16() const { return _mm512_mul_ps(dl, _mm512_set1_ps(9.f)); }
};

}  // namespace

const RowsFn avx512::rows_iq3_xxs = rows_q<FIQ3_XXS>;
const RowsFn avx512::rows_iq3_s = rows_q<FIQ3_S>;
const RowsFn avx512::rows_iq1_m = rows_q<FIQ1_M>;
#endif
