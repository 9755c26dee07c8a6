// AVX512 per-row kernels of IQ2_XXS, IQ2_XS, IQ2_S (lowbit.h): each format's own F struct (rows_avx512.h). Compiled
// with the AVX512 flags only; no C++ library (common.h).
//
// The three share one shape: prep() unpacks a block's indices and sign bytes with vector operations
// where they are packed, and stores them a block ahead; a 64-weight chunk is then 8 codebook entries
// of 8 weights, fetched by 8 scalar loads (the lookups bound these kernels, not the 2.06-2.56 bits
// a weight of the stream; an 8 x 64-bit gather decodes a chunk ~1.5x slower on Zen 4), its 8 sign
// bytes one 64-bit mask, and the signed weight v goes in as the code v + 128 with kShift 7 (the
// activations' sums seed the dot products with -128 x sum), so no mins.
#if defined(__x86_64__) || defined(_M_X64)
#include "kernels.h"
#include "lowbit_iq2.h"
#include "rows_avx512.h"

namespace {

// 32 sign indices of 7 bits (16-bit lanes) to their sign bytes (ksigns: bit 7 is the parity of the
// 7, folded here rather than looked up), for prep() to store: a block's at once
inline __m256i iq2_signs32(__m512i s7) {
    __m512i x = _mm512_xor_si512(s7, _mm512_srli_epi16(s7, 4));
    x = _mm512_xor_si512(x, _mm512_srli_epi16(x, 2));
    x = _mm512_xor_si512(x, _mm512_srli_epi16(x, 1));
    return _mm512_cvtepi16_epi8(_mm512_or_si512(s7, _mm512_slli_epi16(_mm512_and_si512(x, _mm512_set1_epi16(1)), 7)));
}

// 64 codes v + 128 from 8 codebook entries (g) and their sign mask (bit k negates weight k)
inline __m512i iq2_codes64(__m512i g, __mmask64 neg) {
    const __m512i k80 = _mm512_set1_epi8((char)0x80);
    return _mm512_mask_sub_epi8(_mm512_xor_si512(g, k80), neg, k80, g);  // 128 + g, or 128 - g
}

// 8 codebook entries by index, as 8 scalar loads (a gather's alternative)
template <class I>
inline __m128i iq2_pair(const uint64_t* grid, I i, I j) {
    // movq + movhps from memory: the entries go straight to the vector register, not through GPRs
    return _mm_castps_si128(_mm_loadh_pi(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)(grid + i))), (const __m64*)(grid + j)));
}
template <class I>
inline __m512i iq2_lookup8(const uint64_t* grid, const I* i) {
    const __m256i lo = _mm256_set_m128i(iq2_pair(grid, i[2], i[3]), iq2_pair(grid, i[0], i[1]));
    const __m256i hi = _mm256_set_m128i(iq2_pair(grid, i[6], i[7]), iq2_pair(grid, i[4], i[5]));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// d * (0.5 + s) * 0.25 of the 16 4-bit scales of IQ2_XS and IQ2_S (block 2i: low nibble of byte i)
inline __m512 iq2_scales16(uint16_t d, const uint8_t* scales) {
    const __m128i x = _mm_loadl_epi64((const __m128i*)scales);
    const __m128i m = _mm_set1_epi8(0x0F);
    const __m128i s = _mm_unpacklo_epi8(_mm_and_si128(x, m), _mm_and_si128(_mm_srli_epi16(x, 4), m));
    const __m512 f = _mm512_add_ps(_mm512_set1_ps(0.5f), _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(s)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(tile_h2f(d)), f), _mm512_set1_ps(0.25f));
}

// lane l of chunk c: the scale of block 4c + l / 4 (blocks of 16)
inline __m512 iq2_lanes16(__m512 sc16, int c) {
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(4 * c),
                                         _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
    return _mm512_permutexvar_ps(idx, sc16);
}

// IQ2_XXS: per 32 weights 8 bytes, 4 codebook indices then a word of 4 x 7 sign bits and the scale.
// prep() turns the block's 32 sign indices into sign bytes in vector registers, stored a block
// ahead (kPrepAhead) for chunk() to load as masks
struct FIQ2_XXS {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ2_XXS), kShift = 7;
    static const bool kMins = false, kPrepAhead = true;
    const uint8_t* q;  // the 64 bytes after d
    __m512 d8;         // lanes 0-7: the 8 blocks' scales
    alignas(32) uint8_t signs[32];
    void prep(const uint8_t* p) {
        q = p + 2;
        const __m512i all = _mm512_loadu_si512((const void*)q);
        // the sign-and-scale words are the odd dwords of the 64 bytes, the scale their top 4 bits
        const __m512i w = _mm512_permutexvar_epi32(_mm512_set_epi32(15, 15, 15, 15, 13, 13, 13, 13, 11, 11, 11, 11, 9, 9, 9, 9), all);
        const __m512i v = _mm512_permutexvar_epi32(_mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1), all);
        const __m512i shift = _mm512_set4_epi32(21, 14, 7, 0);
        const __m512i lo = _mm512_and_si512(_mm512_srlv_epi32(v, shift), _mm512_set1_epi32(127));  // entries 0-15
        const __m512i hi = _mm512_and_si512(_mm512_srlv_epi32(w, shift), _mm512_set1_epi32(127));  // 16-31
        const __m512i s7 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(lo)), _mm512_cvtepi32_epi16(hi), 1);
        _mm256_store_si256((__m256i*)signs, iq2_signs32(s7));
        const __m512i sw = _mm512_permutexvar_epi32(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 15, 13, 11, 9, 7, 5, 3, 1), all);
        const __m512 f = _mm512_add_ps(_mm512_set1_ps(0.5f), _mm512_cvtepi32_ps(_mm512_srli_epi32(sw, 28)));
        d8 = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(tile_h2f(*(const uint16_t*)p)), f), _mm512_set1_ps(0.25f));
    }
    __m512i chunk(int c, __m512& s) const {
        s = lanes_from(d8, 2 * c, 2 * c + 1);
        const uint8_t* e = q + 16 * c;  // two blocks: 4 indices, their signs word, 4 indices, signs
        const uint8_t ix[8] = {e[0], e[1], e[2], e[3], e[8], e[9], e[10], e[11]};
        uint64_t neg;
        memcpy(&neg, signs + 8 * c, 8);
        return iq2_codes64(iq2_lookup8(kIq2xxsGrid, ix), _cvtu64_mask64(neg));
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

// IQ2_XS: per 8 weights a 16-bit word, 9-bit codebook index and 7 sign bits; 4-bit scales per 16.
// prep() splits the 32 words into indices and sign bytes in vector registers (as FIQ2_XXS)
struct FIQ2_XS {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ2_XS), kShift = 7;
    static const bool kMins = false, kPrepAhead = true;
    __m512 sc16;
    alignas(64) uint16_t idx[32];
    alignas(32) uint8_t signs[32];
    void prep(const uint8_t* p) {
        const BlockIQ2_XS* b = (const BlockIQ2_XS*)p;
        sc16 = iq2_scales16(b->d, b->scales);
        const __m512i w = _mm512_loadu_si512((const void*)b->qs);
        _mm512_store_si512((void*)idx, _mm512_and_si512(w, _mm512_set1_epi16(511)));
        _mm256_store_si256((__m256i*)signs, iq2_signs32(_mm512_srli_epi16(w, 9)));
    }
    __m512i chunk(int c, __m512& s) const {
        s = iq2_lanes16(sc16, c);
        uint64_t neg;
        memcpy(&neg, signs + 8 * c, 8);
        return iq2_codes64(iq2_lookup8(kIq2xsGrid, idx + 8 * c), _cvtu64_mask64(neg));
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

// IQ2_S: per 8 weights index bits 0-7 (qs), bits 8-9 (qh, 2 per entry) and a byte of sign bits.
// prep() joins the 32 10-bit indices in vector registers and stores them (as FIQ1_S does; a block
// ahead, so the chunks' scalar loads find them out of the store queue): per entry in chunk() they
// cost a shift, a mask and an or each, which made IQ2_S the slowest of the three. Its sign bytes are
// copied there too: read from the block at chunk() time they halved the experts' batch-1 speed
struct FIQ2_S {
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    static const int kSU = 256, kBytes = sizeof(BlockIQ2_S), kShift = 7;
    static const bool kMins = false, kPrepAhead = true;
    const BlockIQ2_S* b;
    __m512 sc16;
    alignas(64) uint16_t idx[32];
    alignas(32) uint8_t signs[32];
    void prep(const uint8_t* p) {
        b = (const BlockIQ2_S*)p;
        _mm256_store_si256((__m256i*)signs, _mm256_loadu_si256((const __m256i*)(b->qs + 32)));
        sc16 = iq2_scales16(b->d, b->scales);
        const __m512i lo = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)b->qs));
        // entry g: bits 2(g % 4) of qh[g / 4]
        const __m512i qh = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i*)b->qh)));
        const __m512i spread = _mm512_permutexvar_epi16(_mm512_srli_epi16(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16,
                                                                                         15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 2), qh);
        const __m512i shift = _mm512_set4_epi32(0x00060004, 0x00020000, 0x00060004, 0x00020000);
        const __m512i hi = _mm512_and_si512(_mm512_srlv_epi16(spread, shift), _mm512_set1_epi16(3));
        _mm512_store_si512((void*)idx, _mm512_or_si512(lo, _mm512_slli_epi16(hi, 8)));
    }
    __m512i chunk(int c, __m512& s) const {
        s = iq2_lanes16(sc16, c);
        const __m512i g = iq2_lookup8(kIq2sGrid, idx + 8 * c);
        uint64_t neg;
        memcpy(&neg, signs + 8 * c, 8);
        return iq2_codes64(g, _cvtu64_mask64(neg));
    }
    __m256 mins() const { return _mm256_setzero_ps(); }
};

}  // namespace

const RowsFn avx512::rows_iq2_xxs = rows_q<FIQ2_XXS>;
const RowsFn avx512::rows_iq2_xs = rows_q<FIQ2_XS>;
const RowsFn avx512::rows_iq2_s = rows_q<FIQ2_S>;
#endif
