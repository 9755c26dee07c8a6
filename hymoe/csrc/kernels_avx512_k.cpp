// AVX512-VNNI kernels for the formats with 256-weight blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, TQ2_0, IQ4_XS)
// against per-256 activations, compiled with the AVX512 flags only.
#if defined(__x86_64__) || defined(_M_X64)
#include "k_scales.h"
#include "kernels.h"
#include "lowbit.h"
#include "simd_avx512.h"

namespace {

// ---- K-quants against per-256 activations: sub-block scales applied in integer ---------------
//   p16 = maddubs(codes, a) (pairs of products), acc32 += dpwssd(p16, scale16); per super-block
//   acc += float(acc32) * d * d_a. Codes stay below 64, so the 16-bit pair sums cannot saturate.
//   Q4_K/Q5_K (kPackPairs) instead take sums of 4 products by dpbusd for two chunks, packed to int16
//   (at most 4 x 31 x 127 = 15748) and scaled by one dpwssd.
template <bool kFive>
struct KQ45 {
    static const int kBytes = kFive ? 176 : 144;
    static const bool kUnitScales = false;
    static const bool kPaired = true;  // chunks pair sub-blocks 2 apart: activations from the paired copy
    static const bool kPackPairs = true;
    static const bool kSeedSum = false;
    static const bool kSeedCorr = false;  // seed(): the offset correction in the integer dot
    static const bool kRowMins = false;  // KQ2: the mins' correction for a pass's rows at once
    static const bool kRowScales = false;  // KQ3: the scales of a pass's rows decoded at once
    static const int kUnitExtra = 0;  // bytes per token and unit of 256 the format's unit_extra() writes
    static const bool kMulScales = false;  // scales32(): int32 block scales by vpmulld (KIQ4XS)
    static const bool kTQ2Order = false;  // activations per chunk c: 32c.. and 128 + 32c.. (a copy)
    static const int kDecodeRows = 1;  // rows a pass for one token (decode_rows_of: 1 streams best)
    static constexpr int blk_lo(int c) { return 4 * (c / 2) + c % 2; }
    static constexpr int blk_hi(int c) { return blk_lo(c) + 2; }
    const uint8_t *qs, *qh;
    KQ45Scales s;
    void prep(const uint8_t* p) {
        s.load(p);
        sc4 = _mm512_broadcast_i32x4(s.sc);
        point(p);
    }
    void point(const uint8_t* p) {  // the codes only (kq45_groups decodes the scales itself)
        qh = kFive ? p + 16 : nullptr;
        qs = kFive ? p + 48 : p + 16;
    }
    __m512i sc4;  // the 8 int16 scales in each 128-bit lane (an in-lane vpshufb picks them: cheaper than vpermw)
    // chunks c and c + 1 after vpdpbusd and vpackssdw: 128-bit lanes 0-1 hold sub-blocks
    // blk_lo(c) (int16 0-3) and blk_lo(c + 1) (4-7), lanes 2-3 blk_hi(c) and blk_hi(c + 1)
    __m512i scales_pair(int c) const {
        const int a = 2 * blk_lo(c), b = 2 * blk_lo(c + 1), e = 2 * blk_hi(c), f = 2 * blk_hi(c + 1);
        const long long lo = (long long)(0x0100010001000100ULL + 0x0101010101010101ULL * (unsigned)a);
        const long long lo1 = (long long)(0x0100010001000100ULL + 0x0101010101010101ULL * (unsigned)b);
        const long long hi = (long long)(0x0100010001000100ULL + 0x0101010101010101ULL * (unsigned)e);
        const long long hi1 = (long long)(0x0100010001000100ULL + 0x0101010101010101ULL * (unsigned)f);
        return _mm512_shuffle_epi8(sc4, _mm512_set_epi64(hi1, hi, hi1, hi, lo1, lo, lo1, lo));
    }
    __m512i chunk(int c) const {
        __m512i v = _mm512_loadu_si512((const void*)(qs + 64 * (c / 2)));
        if (c % 2) v = _mm512_srli_epi16(v, 4);
        v = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
        if (kFive) v = _mm512_or_si512(v, _mm512_slli_epi16(bits_of_two_32_bytes(qh, blk_lo(c), blk_hi(c)), 4));
        return v;
    }
    float d() const { return s.d; }
    float corr_scale() const { return 1.f; }  // correction() already carries -dmin
    // the per-super-block correction: sum_j m_j * bsum32_j, scaled by -dmin
    __m512 correction(const int16_t* bk16, const int16_t* bk32) const {
        (void)bk16;
        __m128i m = _mm_madd_epi16(s.mn, _mm_loadu_si128((const __m128i*)bk32));  // 4 x int32
        return _mm512_zextps128_ps512(_mm_mul_ps(_mm_cvtepi32_ps(m), _mm_set1_ps(-s.dmin)));
    }
};

struct KQ6 {
    static const bool kPackPairs = false;
    static const int kBytes = 210;
    static const bool kUnitScales = false;
    static const bool kPaired = false;
    static const bool kSeedSum = false;
    static const bool kSeedCorr = false;  // seed(): the offset correction in the integer dot
    static const bool kRowMins = false;  // KQ2: the mins' correction for a pass's rows at once
    static const bool kRowScales = false;  // KQ3: the scales of a pass's rows decoded at once
    static const int kUnitExtra = 0;  // bytes per token and unit of 256 the format's unit_extra() writes
    static const bool kMulScales = false;  // scales32(): int32 block scales by vpmulld (KIQ4XS)
    static const bool kTQ2Order = false;  // activations per chunk c: 32c.. and 128 + 32c.. (a copy)
    static const int kDecodeRows = 1;  // rows a pass for one token (decode_rows_of: 1 streams best)
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    const BlockQ6_K* b;
    __m512i sc;  // int16 x16 in the low half
    float dd;
    void prep(const uint8_t* p) {
        b = (const BlockQ6_K*)p;
        sc = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)b->scales)));
        dd = h2f(b->d);
    }
    __m512i scales16(int c) const {  // four groups of 16 weights: 8 int16 lanes each
        const __m512i g = _mm512_set_epi64(0x0003000300030003LL, 0x0003000300030003LL, 0x0002000200020002LL,
                                           0x0002000200020002LL, 0x0001000100010001LL, 0x0001000100010001LL, 0, 0);
        return _mm512_permutexvar_epi16(_mm512_add_epi16(g, _mm512_set1_epi16((short)(4 * c))), sc);
    }
    __m512i chunk(int c) const {
        int h = c / 2, sh = c % 2;
        __m512i lo = _mm512_loadu_si512((const void*)(b->ql + 64 * h));
        lo = _mm512_and_si512(_mm512_srli_epi16(lo, 4 * sh), _mm512_set1_epi8(0x0F));
        __m512i hi = bits_of_32_bytes(b->qh + 32 * h, 4 * sh, 4 * sh + 2, 3);
        return _mm512_or_si512(lo, _mm512_slli_epi16(hi, 4));
    }
    float d() const { return dd; }
    float corr_scale() const { return dd; }
    // codes are q + 32: subtract 32 * sum_g scale_g * bsum16_g
    __m512 correction(const int16_t* bk16, const int16_t*) const {
        __m256i m = _mm256_madd_epi16(_mm512_castsi512_si256(sc), _mm256_loadu_si256((const __m256i*)bk16));
        return _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(-32.f)));
    }
};

// lane i of a vector: get(i)'s 128 bits for the NR <= 4 rows of a pass (the lanes past NR undefined)
template <int NR, class Get>
inline __m512i lanes_of_rows(Get get) {
    __m512i v = _mm512_castsi128_si512(get(0));
    if constexpr (NR > 1) v = _mm512_inserti32x4(v, get(1), 1);
    if constexpr (NR > 2) v = _mm512_inserti32x4(v, get(2), 2);
    if constexpr (NR > 3) v = _mm512_inserti32x4(v, get(3), 3);
    return v;
}

// Q2_K and Q3_K's 2-bit planes: chunk c is half c / 2 of the unit (qs[32h..32h+31]), its weights
// 0-31 at bits 4(c % 2), weights 32-63 at bits 4(c % 2) + 2; one broadcast, one shift, one mask
inline __m512i k_low2_chunk(const uint8_t* qs, int c) {
    const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)(qs + 32 * (c / 2))));
    const __m512i shift = _mm512_inserti64x4(_mm512_set1_epi64(4 * (c % 2)), _mm256_set1_epi64x(4 * (c % 2) + 2), 1);
    return _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(3));
}

// the int16 scales of chunk c's four groups of 16 weights (8 int16 lanes each) from a unit's 16
inline __m512i scales16_of(__m512i sc, int c) {
    const __m512i g = _mm512_set_epi64(0x0003000300030003LL, 0x0003000300030003LL, 0x0002000200020002LL,
                                       0x0002000200020002LL, 0x0001000100010001LL, 0x0001000100010001LL, 0, 0);
    return _mm512_permutexvar_epi16(_mm512_add_epi16(g, _mm512_set1_epi16((short)(4 * c))), sc);
}

// Q2_K: value = d * (sc & 15) * q - dmin * (sc >> 4) per block of 16, codes q 0..3: the 4-bit
// scales applied in integer. Its 2-bit planes are TQ2_0's: chunk c is field c of the 64 qs bytes
// (weights 32c.. and 128 + 32c.., activations from a copy in that order: kTQ2Order), so each 128-bit
// lane of a chunk is one block of 16 and two chunks go through vpdpbusd, vpackssdw (sums of 4 codes:
// at most 4 x 3 x 127) and one vpdpwssd with the scales picked by an in-lane vpshufb (as Q4_K).
// The mins' correction (kRowMins) is one integer dot for up to four rows at once: lane i holds row
// i's 16 mins against the activations' 16 sums of 16 split in bytes (rows_k_tile), about a fifth of
// the kernel's time when each row paid its own widening, multiply-add, conversion and broadcast.
struct KQ2 {
    static const bool kPackPairs = true;
    static const int kBytes = sizeof(BlockQ2_K);
    static const bool kUnitScales = false;
    static const bool kPaired = false;
    static const bool kSeedSum = false;
    static const bool kSeedCorr = false;
    static const bool kRowMins = true;
    static const bool kRowScales = false;  // KQ3: the scales of a pass's rows decoded at once
    static const int kUnitExtra = 128;  // per token and unit: its 16 sums of 16, high bytes then low, x4
    static const bool kMulScales = false;  // scales32(): int32 block scales by vpmulld (KIQ4XS)
    static const bool kTQ2Order = true;
    static const int kDecodeRows = kRowsDecode;  // bound by its arithmetic: rows share the activations
    static constexpr int blk_lo(int c) { return c; }
    static constexpr int blk_hi(int c) { return c + 4; }
    __m512i q;
    __m512i sc4;  // the 16 scale bytes (low nibbles) in each 128-bit lane
    __m512i all4;  // the 16 scale bytes (mins in the high nibbles) in each 128-bit lane
    __m128 ddm;   // d, dmin
    void prep(const uint8_t* p) {
        const BlockQ2_K* b = (const BlockQ2_K*)p;
        q = _mm512_loadu_si512((const void*)b->qs);
        all4 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i*)b->scales));
        sc4 = _mm512_and_si512(all4, _mm512_set1_epi8(0x0F));
        uint32_t dd2;  // d and dmin, both fp16: one conversion
        memcpy(&dd2, p + 80, 4);
        ddm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)dd2));
    }
    // the activations' 16 sums of 16 as bytes, high (signed) then low (unsigned), each in the four
    // 128-bit lanes: the mins' dot is then two vpdpbusd
    static void unit_extra(const int16_t* bk16, int8_t* dst) {
        const __m256i b = _mm256_loadu_si256((const __m256i*)bk16);
        _mm512_storeu_si512((void*)dst, _mm512_broadcast_i32x4(_mm256_cvtepi16_epi8(_mm256_srai_epi16(b, 8))));
        _mm512_storeu_si512((void*)(dst + 64), _mm512_broadcast_i32x4(_mm256_cvtepi16_epi8(b)));
    }
    // lane i of both: row i of a pass of NR <= 4 (the rest undefined): its 16 mins as bytes, its d and dmin
    template <int NR>
    static __m512i mins_of(const KQ2* f) {
        __m512i v = f[0].all4;  // lane i from row i's: blends, off the shuffle ports
        if constexpr (NR > 1) v = _mm512_mask_blend_epi32(0x00F0, v, f[1].all4);
        if constexpr (NR > 2) v = _mm512_mask_blend_epi32(0x0F00, v, f[2].all4);
        if constexpr (NR > 3) v = _mm512_mask_blend_epi32(0xF000, v, f[3].all4);
        return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F));
    }
    template <int NR>
    static __m512 scales_of(const KQ2* f) {
        return _mm512_castsi512_ps(lanes_of_rows<NR>([f](int i) { return _mm_castps_si128(f[i].ddm); }));
    }
    // lane L of chunk c is block 2c + L % 2 + 8 (L / 2) of 16; after vpackssdw of chunks c and c + 1
    // int16 0-3 of lane L are chunk c's, 4-7 chunk c + 1's: their scale bytes, zero-extended (0x80)
    static constexpr long long idx4(int blk) { return (long long)(0x8000800080008000ULL + 0x0001000100010001ULL * (unsigned)blk); }
    __m512i scales_pair(int c) const {
        return _mm512_shuffle_epi8(sc4, _mm512_set_epi64(idx4(2 * c + 11), idx4(2 * c + 9), idx4(2 * c + 10), idx4(2 * c + 8),
                                                         idx4(2 * c + 3), idx4(2 * c + 1), idx4(2 * c + 2), idx4(2 * c)));
    }
    __m512i scales16(int) const { return _mm512_setzero_si512(); }  // unused: kPackPairs
    __m512i chunk(int c) const { return _mm512_and_si512(c ? _mm512_srli_epi16(q, 2 * c) : q, _mm512_set1_epi8(3)); }
    float d() const { return _mm_cvtss_f32(ddm); }
    float corr_scale() const { return 0.f; }  // unused: kRowMins
    __m512 correction(const int16_t*, const int16_t*) const { return _mm512_setzero_ps(); }  // unused: kRowMins
};

// Q3_K: value = d * (sc - 32) * (q - 4), q the 2-bit plane | the hmask bit << 2 as codes 0..7, the
// signed 6-bit scales applied in integer, the offset 4 seeding the integer dot. Chunks in TQ2_0's
// order as KQ2 (pairs by vpdpbusd + vpackssdw, sums of 4 codes at most 4 x 7 x 127), the int16
// scales picked by one vpermw a pair. Weights 32j..32j+31 hold bit j of hmask[0..31]: with the upper
// half (j = c + 4) rotated by -4 once, a 64-bit rotate by 2 - c puts it at bit 2 of the same byte.
// A pass's rows decode their 12 scale bytes together (kRowScales: lane i of one vector is row i's;
// one row at a time in general registers cost a fifth of the kernel), and two rows share one
// vpmaddwd for the seed, against -4 x the activations' sums of 16 (kUnitExtra).
struct KQ3 {
    static const bool kPackPairs = true;
    static const int kBytes = sizeof(BlockQ3_K);
    static const bool kUnitScales = false;
    static const bool kPaired = false;
    static const bool kSeedSum = false;
    static const bool kSeedCorr = true;  // the seed carries the offset (rows_seeds): no correction after
    static const bool kRowMins = false;  // KQ2: the mins' correction for a pass's rows at once
    static const bool kRowScales = true;
    static const int kUnitExtra = 64;  // per token and unit: -4 x its 16 sums of 16, int16, twice
    static const bool kMulScales = false;  // scales32(): int32 block scales by vpmulld (KIQ4XS)
    static const bool kTQ2Order = true;
    static const int kDecodeRows = 1;  // rows a pass for one token (decode_rows_of: 1 streams best)
    static constexpr int blk_lo(int c) { return c; }
    static constexpr int blk_hi(int c) { return c + 4; }
    __m512i q, hm;
    __m512i sc2;  // int16: the scales of rows 2k (int16 0-15) and 2k + 1 (16-31) of the pass
    int half;     // 0 or 16: this row's in sc2
    float dd;
    void prep(const uint8_t* p) {
        const BlockQ3_K* b = (const BlockQ3_K*)p;
        q = _mm512_loadu_si512((const void*)b->qs);
        // bytes 32-63 rotated by -4: bit c + 4 of the upper half's bytes at bit c, as in the lower half
        const __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)b->hmask));
        hm = _mm512_rolv_epi64(h, _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi64x(60), 1));
        dd = h2f(b->d);
    }
    static void unit_extra(const int16_t* bk16, int8_t* dst) {
        const __m256i m4 = _mm256_mullo_epi16(_mm256_loadu_si256((const __m256i*)bk16), _mm256_set1_epi16(-4));
        _mm512_storeu_si512((void*)dst, _mm512_broadcast_i64x4(m4));
    }
    // scale j of a row: the low (j < 8) or high nibble of byte j % 8, | bits 2 (j / 4) of byte 8 + j % 4
    // at 4, minus 32. Lane i: row i's 16 bytes from offset 94 (its scales at 2..13, inside the block)
    template <int NR>
    static void rows_scales(KQ3* f, const uint8_t* const* blk) {
        const __m512i x = lanes_of_rows<NR>([blk](int i) { return _mm_loadu_si128((const __m128i*)(blk[i] + 94)); });
        const __m512i lo8 = _mm512_set1_epi64(0x0908070605040302LL);    // byte 2 + j % 8
        const __m512i hi4 = _mm512_set1_epi64(0x0D0C0B0A0D0C0B0ALL);    // byte 10 + j % 4
        const __m512i t = _mm512_shuffle_epi8(x, lo8);
        const __m512i low = _mm512_and_si512(_mm512_mask_mov_epi8(t, 0xFF00FF00FF00FF00ULL, _mm512_srli_epi16(t, 4)),
                                             _mm512_set1_epi8(0x0F));
        // bits 2 (j / 4) of the high bytes to bits 4-5: 16-bit shifts (the pair of bytes j, j + 1 share j / 4)
        const long long s01 = 0x0002000200000000LL, s23 = 0x0006000600040004LL;  // bytes j: 2 (j / 4)
        const __m512i shift = _mm512_set_epi64(s23, s01, s23, s01, s23, s01, s23, s01);
        const __m512i u = _mm512_shuffle_epi8(x, hi4);
        const __m512i hb = _mm512_slli_epi16(_mm512_srlv_epi16(u, shift), 4);
        const __m512i sb = _mm512_sub_epi8(_mm512_ternarylogic_epi32(low, hb, _mm512_set1_epi8(0x30), 0xF8),
                                           _mm512_set1_epi8(32));
        const __m512i rows01 = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(sb));
        const __m512i rows23 = NR > 2 ? _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(sb, 1)) : rows01;
        for (int i = 0; i < NR; i++) {
            f[i].sc2 = i < 2 ? rows01 : rows23;
            f[i].half = 16 * (i % 2);
        }
    }
    // the seeds of a pass's rows for one token: codes are q + 4, so each dot starts at
    // -4 * sum_g scale_g * bsum16_g (row 2k's in lanes 0-7, 2k + 1's in 8-15), in integer
    template <int NR, int NT>
    static void rows_seeds(const KQ3* f, const int8_t* extra, __m512i (*dot)[NT], int t) {
        const __m512i m4 = _mm512_loadu_si512((const void*)extra);
        for (int i = 0; i < NR; i += 2) {
            const __m512i m = _mm512_madd_epi16(f[i].sc2, m4);
            dot[i][t] = _mm512_maskz_mov_epi32(0x00FF, m);
            if (i + 1 < NR) dot[i + 1][t] = _mm512_maskz_mov_epi32(0xFF00, m);
        }
    }
    // as KQ2's: int16 0-3 of lane L scale chunk c's block 2c + L % 2 + 8 (L / 2), 4-7 chunk c + 1's
    static constexpr long long idx4(int blk) { return (long long)(0x0001000100010001ULL * (unsigned)blk); }
    __m512i scales_pair(int c) const {
        const __m512i idx = _mm512_set_epi64(idx4(2 * c + 11), idx4(2 * c + 9), idx4(2 * c + 10), idx4(2 * c + 8),
                                             idx4(2 * c + 3), idx4(2 * c + 1), idx4(2 * c + 2), idx4(2 * c));
        return _mm512_permutexvar_epi16(_mm512_add_epi16(idx, _mm512_set1_epi16((short)half)), sc2);
    }
    __m512i scales16(int) const { return _mm512_setzero_si512(); }  // unused: kPackPairs
    __m512i chunk(int c) const {
        const __m512i low2 = _mm512_and_si512(c ? _mm512_srli_epi16(q, 2 * c) : q, _mm512_set1_epi8(3));
        // bit c of hm's bytes rotated to bit 2 (an immediate: no constant held in a register);
        // low2 | (rotated & 4) in one ternary logic op (0xF8: A | (B & C))
        const __m512i h = c == 0 ? _mm512_rol_epi64(hm, 2) : c == 1 ? _mm512_rol_epi64(hm, 1)
                        : c == 2 ? hm : _mm512_ror_epi64(hm, 1);
        return _mm512_ternarylogic_epi32(low2, h, _mm512_set1_epi8(4), 0xF8);
    }
    float d() const { return dd; }
    float corr_scale() const { return 0.f; }  // unused: the seed carries the offset
    __m512 correction(const int16_t*, const int16_t*) const { return _mm512_setzero_ps(); }
};

// TQ2_0 (1.58-bit): 2-bit codes 0..2 (value = code - 1), one fp16 scale per 256. Against per-256
// activations its 64-weight chunks add up in integer, with no float step per chunk.
struct KTQ2 {
    static const bool kPackPairs = false;
    static const int kBytes = 66;
    static const bool kUnitScales = true;  // no sub-block scales: one dpbusd per chunk
    static const bool kPaired = false;
    // codes carry +1 and the scale is one per 256, so the offset is minus the activations' sum in
    // the integer dot itself: computed once per token, not per row (correction() is then unused)
    static const bool kSeedSum = true;
    static const bool kSeedCorr = false;
    static const bool kRowMins = false;  // KQ2: the mins' correction for a pass's rows at once
    static const bool kRowScales = false;  // KQ3: the scales of a pass's rows decoded at once
    static const int kUnitExtra = 0;  // bytes per token and unit of 256 the format's unit_extra() writes
    static const bool kMulScales = false;  // scales32(): int32 block scales by vpmulld (KIQ4XS)
    static const bool kTQ2Order = false;  // activations per chunk c: 32c.. and 128 + 32c.. (a copy)
    static const int kDecodeRows = kRowsDecode;  // bound by its arithmetic: rows share the activations
    // chunk c is 2-bit field c of all 64 bytes: weights 32c.. (bytes 0-31) and 128 + 32c.. (32-63),
    // so the 64 bytes are loaded once and each chunk costs one shift and one mask
    static constexpr int blk_lo(int c) { return c; }
    static constexpr int blk_hi(int c) { return c + 4; }
    __m512i q;
    float dd;
    void prep(const uint8_t* p) {
        q = _mm512_loadu_si512((const void*)p);
        uint16_t dh;
        memcpy(&dh, p + 64, 2);
        dd = h2f(dh);
    }
    __m512i scales16(int) const { return _mm512_set1_epi16(1); }
    __m512i chunk(int c) const {
        return _mm512_and_si512(c ? _mm512_srli_epi16(q, 2 * c) : q, _mm512_set1_epi8(3));
    }
    float d() const { return dd; }
    float corr_scale() const { return dd; }
    __m512 correction(const int16_t*, const int16_t*) const { return _mm512_setzero_ps(); }  // unused: kSeedSum
};

// IQ4_XS: value = d * (ls - 32) * kIQ4Values[q] per block of 32. Chunk c is blocks 2c and 2c + 1
// (weights 64c.. in order: qs[32c..32c + 15] low then high nibbles, qs[32c + 16..] the same), codes
// kIQ4Values[q] + 128 by one vpshufb. Sums of 4 codes x activations reach 4 x 241 x 127, past int16,
// so each chunk's vpdpbusd is scaled by vpmulld with its blocks' int32 scales (lanes 0-7 block 2c,
// 8-15 block 2c + 1); the offset 128 seeds the integer dot as -128 * sum_j s_j * bsum32_j. All in
// int32: at most 4 x 122,428 x 32 per lane plus 128 x 32 x 8 x 4,064, below 2^31.
struct KIQ4XS {
    static const bool kPackPairs = false;
    static const int kBytes = sizeof(BlockIQ4_XS);
    static const bool kUnitScales = false;
    static const bool kPaired = false;
    static const bool kSeedSum = false;
    static const bool kSeedCorr = true;
    static const bool kRowMins = false;  // KQ2: the mins' correction for a pass's rows at once
    static const bool kRowScales = false;  // KQ3: the scales of a pass's rows decoded at once
    static const int kUnitExtra = 0;  // bytes per token and unit of 256 the format's unit_extra() writes
    static const bool kMulScales = true;
    static const bool kTQ2Order = false;
    static const int kDecodeRows = 1;  // rows a pass for one token (decode_rows_of: 1 streams best)
    static constexpr int blk_lo(int c) { return 2 * c; }
    static constexpr int blk_hi(int c) { return 2 * c + 1; }
    const uint8_t* qs;
    __m256i s8;  // the 8 blocks' scales ls - 32, int32
    float dd;
    void prep(const uint8_t* p) {
        const BlockIQ4_XS* b = (const BlockIQ4_XS*)p;
        qs = b->qs;
        dd = h2f(b->d);
        // block j: nibble j of scales_l (a dword) | 2 bits j of scales_h << 4, minus 32
        const __m256i sl = _mm256_srlv_epi32(_mm256_set1_epi32(*(const int*)b->scales_l),
                                             _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        const __m256i sh = _mm256_srlv_epi32(_mm256_set1_epi32(b->scales_h), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
        s8 = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(sl, _mm256_set1_epi32(0xF)),
                                              _mm256_slli_epi32(_mm256_and_si256(sh, _mm256_set1_epi32(3)), 4)),
                              _mm256_set1_epi32(32));
    }
    __m512i scales32(int c) const {
        const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * c), _mm256_set1_epi32(2 * c + 1), 1);
        return _mm512_permutexvar_epi32(idx, _mm512_castsi256_si512(s8));
    }
    __m512i scales16(int) const { return _mm512_setzero_si512(); }  // unused: kMulScales
    __m512i chunk(int c) const {
        const __m512i lut = _mm512_broadcast_i32x4(_mm_xor_si128(_mm_loadu_si128((const __m128i*)kIQ4Values),
                                                                 _mm_set1_epi8((char)0x80)));
        // 128-bit lanes: bytes 0-15 twice, then 16-31 twice; low nibbles in lanes 0 and 2, high in 1 and 3
        const __m512i x = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(qs + 32 * c)));
        const __m512i v = _mm512_shuffle_i64x2(x, x, 0x50);
        const __m512i shift = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
        return _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srlv_epi64(v, shift), _mm512_set1_epi8(0x0F)));
    }
    float d() const { return dd; }
    float corr_scale() const { return 0.f; }  // unused: kSeedCorr
    __m512 correction(const int16_t*, const int16_t*) const { return _mm512_setzero_ps(); }
    __m512i seed(const int16_t*, const int16_t* bk32) const {
        const __m256i m = _mm256_mullo_epi32(s8, _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)bk32)));
        return _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(m, 7)));
    }
};

// lane 0: minus the sum of a super-block's 256 activations (from its 8 int16 sums of 32), lanes
// 1-15: 0. The integer dot's seed for codes that carry +1 (TQ2_0, TQ1_0)
inline __m512i minus_sum256(const int16_t* bk32) {
    __m128i v = _mm_madd_epi16(_mm_loadu_si128((const __m128i*)bk32), _mm_set1_epi16(1));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
    return _mm512_maskz_mov_epi32(1, _mm512_castsi128_si512(_mm_sub_epi32(_mm_setzero_si128(), v)));
}

thread_local ScratchBuffer t_tq2;  // per thread: kTQ2Order's activations, then the units' extras

template <class F>
size_t tq2_bytes(int ntok, int n) {  // n bytes a token, and kUnitExtra a unit of 256
    return (size_t)ntok * ((size_t)n + (size_t)(n / 256) * F::kUnitExtra);
}

template <class F, int NR, int NT>
void rows_k_tile(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int n, float* out,
                 size_t out_stride) {
    ActView a[NT];
    const int8_t* paired[NT];
    const int units = n / 256;
    int8_t* perm = F::kTQ2Order ? (int8_t*)t_tq2.reserve(tq2_bytes<F>(NT, n)) : nullptr;
    // per token and unit, what the format derives from the activations once for all rows (kUnitExtra)
    const int8_t* extras = F::kUnitExtra && perm ? perm + (size_t)NT * n : nullptr;
    for (int t = 0; t < NT; t++) {
        a[t] = act_view(acts[t], n);
        paired[t] = (const int8_t*)acts[t] + paired_at(n);
        if (F::kTQ2Order && perm) {  // per unit and chunk c: values 32c.. then 128 + 32c..
            int8_t* dst = perm + (size_t)t * n;
            for (int u = 0; u < units; u++)
                for (int c = 0; c < 4; c++)
                    _mm512_storeu_si512((void*)(dst + 256 * u + 64 * c),
                                        load_pair(a[t].qk + 256 * u + 32 * c, a[t].qk + 256 * u + 128 + 32 * c, false));
            paired[t] = dst;
        }
        if constexpr (F::kUnitExtra > 0)
            if (perm)
                for (int u = 0; u < units; u++)
                    F::unit_extra(a[t].bk16 + 16 * u, perm + (size_t)NT * n + ((size_t)t * units + u) * F::kUnitExtra);
    }
    if (F::kTQ2Order && !perm) return;  // unreachable: rows_k reserved it
    const Ahead fetch(w, nrows * row_bytes, rows_ahead(row_bytes, NR));
    for (int r = 0; r + NR <= nrows; r += NR) {
        const uint8_t* row = w + r * row_bytes;
        __m512 acc[NR][NT], mins[NT];
        for (int t = 0; t < NT; t++) mins[t] = _mm512_setzero_ps();
        for (int i = 0; i < NR; i++)
            for (int t = 0; t < NT; t++) acc[i][t] = _mm512_setzero_ps();
        for (int u = 0; u < units; u++) {
            F f[NR];
            const uint8_t* blks[NR];
            fetch(pass_at(row, NR, u, F::kBytes), NR * F::kBytes);
            for (int i = 0; i < NR; i++) {
                blks[i] = row + i * row_bytes + u * F::kBytes;
                f[i].prep(blks[i]);
            }
            if constexpr (F::kRowScales) F::template rows_scales<NR>(f, blks);
            __m512i dot[NR][NT];
            for (int t = 0; t < NT; t++) {
                if constexpr (F::kRowScales) {  // the pass's rows seeded together (KQ3)
                    F::template rows_seeds<NR, NT>(f, extras + ((size_t)t * units + u) * F::kUnitExtra, dot, t);
                } else {
                    __m512i seed = _mm512_setzero_si512();
                    if (F::kSeedSum) seed = minus_sum256(a[t].bk32 + 8 * u);
                    for (int i = 0; i < NR; i++) {
                        if constexpr (F::kSeedCorr) dot[i][t] = f[i].seed(a[t].bk16 + 16 * u, a[t].bk32 + 8 * u);
                        else dot[i][t] = seed;
                    }
                }
            }
            if constexpr (F::kPackPairs) {
                // two chunks per step: codes x activations by vpdpbusd (sums of 4 fit int16), packed
                // to int16 and scaled by one vpdpwssd: 3 multiply-class ops per 128 weights, not 4
                for (int c = 0; c < 4; c += 2) {
                    __m512i w0[NR], w1[NR], sc[NR];
                    for (int i = 0; i < NR; i++) {
                        w0[i] = f[i].chunk(c);
                        w1[i] = f[i].chunk(c + 1);
                        sc[i] = f[i].scales_pair(c);
                    }
                    for (int t = 0; t < NT; t++) {
                        const __m512i a0 = _mm512_loadu_si512((const void*)(paired[t] + u * 256 + 64 * c));
                        const __m512i a1 = _mm512_loadu_si512((const void*)(paired[t] + u * 256 + 64 * c + 64));
                        for (int i = 0; i < NR; i++) {
                            const __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0[i], a0);
                            const __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1[i], a1);
                            dot[i][t] = _mm512_dpwssd_epi32(dot[i][t], _mm512_packs_epi32(p0, p1), sc[i]);
                        }
                    }
                }
            } else
            for (int c = 0; c < 4; c++) {
                __m512i wq[NR], sc[NR];
                for (int i = 0; i < NR; i++) {
                    wq[i] = f[i].chunk(c);
                    if constexpr (F::kMulScales) sc[i] = f[i].scales32(c);
                    else sc[i] = f[i].scales16(c);
                }
                const int lo = u * 256 + 32 * F::blk_lo(c), hi = u * 256 + 32 * F::blk_hi(c);
                for (int t = 0; t < NT; t++) {
                    const __m512i aq = F::kPaired ? _mm512_loadu_si512((const void*)(paired[t] + u * 256 + 64 * c))
                                                  : load_pair(a[t].qk + lo, a[t].qk + hi, hi == lo + 32);
                    for (int i = 0; i < NR; i++) {
                        if constexpr (F::kMulScales)  // sums of 4 products overflow int16: scaled in int32
                            dot[i][t] = _mm512_add_epi32(
                                dot[i][t], _mm512_mullo_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[i], aq), sc[i]));
                        else
                            dot[i][t] = F::kUnitScales ? _mm512_dpbusd_epi32(dot[i][t], wq[i], aq)
                                                       : _mm512_dpwssd_epi32(dot[i][t], _mm512_maddubs_epi16(wq[i], aq), sc[i]);
                    }
                }
            }
            if constexpr (F::kRowMins) {
                // lane i: row i's 16 mins against the sums (hi * 256 + lo: 16 x 127 needs 12 bits)
                const __m512i m = F::template mins_of<NR>(f);
                const __m512 ddm = F::template scales_of<NR>(f);  // lane i: row i's d, dmin
                for (int t = 0; t < NT; t++) {
                    const int8_t* s = extras + ((size_t)t * units + u) * F::kUnitExtra;
                    __m512i x = _mm512_dpbusd_epi32(_mm512_setzero_si512(), m, _mm512_loadu_si512((const void*)s));
                    x = _mm512_dpbusd_epi32(_mm512_slli_epi32(x, 8), _mm512_loadu_si512((const void*)(s + 64)), m);
                    const __m512 sc = _mm512_mul_ps(ddm, _mm512_set1_ps(a[t].dk[u]));
                    mins[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(x), _mm512_permute_ps(sc, 0x55), mins[t]);
                    for (int i = 0; i < NR; i++)  // the block's sum off the accumulator's chain, then one add
                        acc[i][t] = _mm512_add_ps(acc[i][t], _mm512_mul_ps(_mm512_cvtepi32_ps(dot[i][t]),
                                                                           _mm512_permutexvar_ps(_mm512_set1_epi32(4 * i), sc)));
                }
                continue;
            }
            for (int t = 0; t < NT; t++) {
                const float da = a[t].dk[u];
                for (int i = 0; i < NR; i++) {
                    acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][t]), _mm512_set1_ps(f[i].d() * da), acc[i][t]);
                    // the correction goes straight into lanes 0-7 (a separate accumulator spilled at NR 4)
                    if (!F::kSeedSum && !F::kSeedCorr)
                        acc[i][t] = _mm512_mask3_fmadd_ps(f[i].correction(a[t].bk16 + 16 * u, a[t].bk32 + 8 * u),
                                                          _mm512_set1_ps(da * f[i].corr_scale()), acc[i][t], 0x00FF);
                }
            }
        }
        // kRowMins: lane i of mins[t] goes to row i
        if constexpr (F::kRowMins)
            for (int t = 0; t < NT; t++)
                for (int i = 0; i < NR; i++)
                    acc[i][t] = _mm512_add_ps(acc[i][t], _mm512_maskz_permutexvar_ps(
                                                             0x000F, _mm512_add_epi32(_mm512_set1_epi32(4 * i),
                                                                                      _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 2, 1, 0)),
                                                             mins[t]));
        for (int t = 0; t < NT; t++) {
            __m512 sums[NR];
            for (int i = 0; i < NR; i++) sums[i] = acc[i][t];
            store_sums<NR>(sums, out + t * out_stride + r);
        }
    }
}

#include "kq45_groups.h"

// Q4_K_G4 (common.h) for the per-row and batch kernels: a block's head and codes found from its
// address as if the blocks lay back to back, and a chunk's 64 bytes put back in the file's order by
// one two-source permute, so Q4_K's arithmetic follows unchanged.
struct KQ4G : KQ45<false> {
    const uint8_t* xy;  // the block's codes: X, then Y
    void prep(const uint8_t* p) {
        s.load(g4_head(p));
        sc4 = _mm512_broadcast_i32x4(s.sc);
        point(p);
    }
    void point(const uint8_t* p) { xy = g4_codes(p); }
    __m512i chunk(int c) const {
        // the file's bytes 64h..64h+63 (h = c / 2) are the 16-byte pieces X_2h, Y_2h, X_2h+1, Y_2h+1
        const __m512i idx = c < 2 ? _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0) : _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
        __m512i v = _mm512_permutex2var_epi64(_mm512_load_si512((const void*)xy), idx,
                                              _mm512_load_si512((const void*)(xy + 64)));
        if (c % 2) v = _mm512_srli_epi16(v, 4);
        return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
    }
};


// ---- TQ1_0 (1.69 bits): five base-3 digits per byte, digit k of q = floor(3 (q 3^k mod 256) / 256)
// (ggml's encoding). The 52 code bytes of a block sit in one zmm, so digit k of all of them is one
// vector: lanes 0-31 are weights 32k.., lanes 32-47 weights 160 + 16k.., lanes 48-51 weights
// 240 + 4k.. (k < 4). The activations are permuted to match once per call and token; the codes
// carry +1, seeded as minus the activations' sum, as TQ2_0.
inline __m512i times9(__m512i v) {  // v * 9 mod 256 per byte: (v << 3) + v, the shift kept in bytes
    return _mm512_add_epi8(_mm512_and_si512(_mm512_slli_epi16(v, 3), _mm512_set1_epi8((char)0xF8)), v);
}
inline __m512i tq1_digit(__m512i q) {  // floor(3q / 256) = (q >= 86) + (q >= 171)
    const __m512i one = _mm512_set1_epi8(1);
    const __m512i t = _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(q, _mm512_set1_epi8(86)), one);
    return _mm512_mask_add_epi8(t, _mm512_cmpge_epu8_mask(q, _mm512_set1_epi8((char)171)), t, one);
}

thread_local ScratchBuffer t_tq1;  // per thread: up to 4 tokens' permuted activations, 5 x 64 bytes per 256

inline void tq1_permute(const int8_t* qk, int units, int8_t* dst) {
    for (int u = 0; u < units; u++) {
        const int8_t* a = qk + 256 * u;
        for (int k = 0; k < 5; k++) {
            int32_t tail = 0;
            if (k < 4) memcpy(&tail, a + 240 + 4 * k, 4);
            __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(a + 32 * k)));
            v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i*)(a + 160 + 16 * k)), 2);
            v = _mm512_inserti32x4(v, _mm_cvtsi32_si128(tail), 3);
            _mm512_store_si512((void*)(dst + 320 * u + 64 * k), v);
        }
    }
}

template <int NT>
void tq1_rows(const uint8_t* w, size_t row_bytes, int nrows, const ActView* a, const int8_t* perm, int units,
              float* out, size_t out_stride) {
    const Ahead fetch(w, nrows * row_bytes, rows_ahead(row_bytes, 1));
    for (int r = 0; r < nrows; r++) {
        const uint8_t* row = w + r * row_bytes;
        __m512 acc[NT];
        for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
        for (int u = 0; u < units; u++) {
            const uint8_t* blk = row + u * sizeof(BlockTQ1_0);
            fetch(blk, sizeof(BlockTQ1_0));
            const __m512i v = _mm512_maskz_loadu_epi8(0x000FFFFFFFFFFFFFULL, blk);  // qs and qh, 52 bytes
            const __m512i v3 = _mm512_add_epi8(_mm512_add_epi8(v, v), v), v9 = times9(v);
            const __m512i digit[5] = {tq1_digit(v), tq1_digit(v3), tq1_digit(v9), tq1_digit(times9(v3)),
                                      tq1_digit(times9(v9))};
            uint16_t dh;
            memcpy(&dh, blk + 52, 2);
            const float d = h2f(dh);
            for (int t = 0; t < NT; t++) {
                __m512i dot = minus_sum256(a[t].bk32 + 8 * u);
                const int8_t* p = perm + (size_t)t * units * 320 + 320 * u;
                for (int k = 0; k < 5; k++) dot = _mm512_dpbusd_epi32(dot, digit[k], _mm512_load_si512((const void*)(p + 64 * k)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(d * a[t].dk[u]), acc[t]);
            }
        }
        for (int t = 0; t < NT; t++) out[t * out_stride + r] = hsum(acc[t]);
    }
}

int rows_tq1(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
             size_t out_stride) {
    const int units = n / 256;
    int8_t* perm = (int8_t*)t_tq1.reserve((size_t)4 * units * 320);
    if (n % 256 || !perm) return 0;
    TokenGroups groups(w);
    for (int t0 = 0; t0 < ntok; t0 += 4) {  // the row codes are decoded once for up to 4 tokens
        const int nt = ntok - t0 < 4 ? ntok - t0 : 4;
        groups.next_group(t0 + 4 >= ntok);
        ActView a[4];
        for (int t = 0; t < nt; t++) {
            a[t] = act_view(acts[t0 + t], n);
            tq1_permute(a[t].qk, units, perm + (size_t)t * units * 320);
        }
        float* o = out + t0 * out_stride;
        switch (nt) {
            case 4: tq1_rows<4>(w, row_bytes, nrows, a, perm, units, o, out_stride); break;
            case 3: tq1_rows<3>(w, row_bytes, nrows, a, perm, units, o, out_stride); break;
            case 2: tq1_rows<2>(w, row_bytes, nrows, a, perm, units, o, out_stride); break;
            default: tq1_rows<1>(w, row_bytes, nrows, a, perm, units, o, out_stride); break;
        }
    }
    return nrows;
}

template <class F, int NR, int NT>
struct KTile {
    static void run(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int n, float* out,
                    size_t out_stride) {
        rows_k_tile<F, NR, NT>(w, row_bytes, nrows, acts, n, out, out_stride);
    }
};

template <class F>
int rows_k(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
           size_t out_stride) {
    if constexpr (F::kPaired)  // Q4_K, Q5_K at one token over rows back to back: blocks in groups of 4
        if (ntok == 1 && g_tuning.kq45_groups && row_bytes == (size_t)(n / 256) * F::kBytes &&
            kq45_grouped<F::kBytes == 176>(w, nrows, acts[0], n, out))
            return nrows;
    if (F::kTQ2Order && !t_tq2.reserve(tq2_bytes<F>(kTile, n))) return 0;  // out of memory: none computed
    rows_tiled<KTile, F>(w, row_bytes, nrows, acts, ntok, n, out, out_stride);
    return nrows;
}

// Q4_K_G4 at one token from a group's start (the callers' units are rows in 16s or 4s: always): the
// groups; else, or out of memory, Q4_K's per-row and batch paths (KQ4G).
int rows_k_g4(const uint8_t* w, size_t row_bytes, int nrows, const void* const* acts, int ntok, int n, float* out,
              size_t out_stride) {
    if (ntok == 1 && g_tuning.kq45_groups && row_bytes == (size_t)(n / 256) * sizeof(BlockQ4_K) && g4_slot(w) == 0 &&
        kq45_groups<false, true, true>(w, nrows, acts[0], n, out))
        return nrows;
    rows_tiled<KTile, KQ4G>(w, row_bytes, nrows, acts, ntok, n, out, out_stride);
    return nrows;
}

}  // namespace

const RowsFn avx512::rows_q4_k = rows_k<KQ45<false>>;
const RowsFn avx512::rows_q4_k_g4 = rows_k_g4;
const RowsFn avx512::rows_q5_k = rows_k<KQ45<true>>;
const RowsFn avx512::rows_q6_k = rows_k<KQ6>;
const RowsFn avx512::rows_q2_k = rows_k<KQ2>;
const RowsFn avx512::rows_q3_k = rows_k<KQ3>;
const RowsFn avx512::rows_tq2_0 = rows_k<KTQ2>;
const RowsFn avx512::rows_iq4_xs = rows_k<KIQ4XS>;
const RowsFn avx512::rows_tq1_0 = rows_tq1;
#endif
