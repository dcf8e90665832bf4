// Native image preprocessing for Qwen2-VL / Qwen2.5-VL (cof_edge._preprocess).
//
// crop -> Pillow-exact BICUBIC resize (uint8) -> rescale+normalize (LUT) -> patchify into the exact
// layout of transformers' Qwen2VLImageProcessorPil: rows are patches in (gh/2, gw/2, mh, mw) order,
// each row is (C=3, T=2, 14, 14) with the single frame duplicated along T.
//
// The resampler reproduces Pillow's libImaging/Resample.c (8 bpc path): separable two-pass
// convolution (pass order as in the installed Pillow, see run_rows), filter support scaled by the
// reduction factor, coefficients normalized in double then converted to 22-bit fixed point, int32
// accumulation starting at 1 << 21, clip to uint8 between the passes. The output is bit-identical to
// PIL.Image.resize(size, BICUBIC) on the cropped array.
//
// Plain CPython C API (no pybind11, no numpy headers): arrays are passed as buffers, the Python
// wrapper (cof_edge/preprocess.py) validates shapes and dtypes and allocates the output.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

// x86-64 + GCC: AVX2 / AVX-512 variants of the kernels (#pragma GCC target), picked at run time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define COF_X86_SIMD 1
#include <immintrin.h>
#endif

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS
constexpr int kPatch = 14;
constexpr int kMerge = 2;
constexpr int kTemporal = 2;
constexpr int kChannels = 3;
constexpr int kPatchDim = kChannels * kTemporal * kPatch * kPatch;  // 1176
constexpr int kFactor = kPatch * kMerge;                             // 28
constexpr Py_ssize_t kStreamBytes = 8 << 20;  // patch outputs from this size on bypass the caches

inline double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

// One axis of Pillow's precompute_coeffs + normalize_coeffs_8bpc (in0 = 0, in1 = in_size).
struct Coeffs {
    int ksize = 0;
    std::vector<int> start;   // first input index per output index
    std::vector<int> count;   // number of taps per output index
    std::vector<int32_t> k;   // out_size * ksize fixed-point weights
    // The same taps for the multiply-add kernels (x86, madd_kernels.inc): taps in groups of 2 or 4,
    // each weight split exactly into digits (make_groups); group g of output i covers inputs
    // group_first[i] + taps * g + (0 .. taps - 1), and padding taps have weight 0.
    int kgroups = 0;               // groups per output index (stride of digits)
    std::vector<int> group_first;  // start, rounded down to a multiple of taps for aligned groups
    std::vector<int> ngroups;
    std::vector<uint32_t> digits;  // [output][group][digit]: one digit of each of the group's taps
};

// Splits k into int16 digits k = hi * 2^11 + lo (pairs, pmaddwd) or into int8 digits
// k = d2 * 2^16 + d1 * 2^8 + d0 (quads, vpdpbusd). Returns false if a digit does not fit.
bool split_weight(int32_t k, int taps, int32_t* digit) {
    if (taps == 2) {
        digit[0] = k & 0x7FF;
        digit[1] = k >> 11;  // |k| < 2^26 always fits int16
        return k > -(1 << 26) && k < (1 << 26);
    }
    for (int d = 0; d < 2; d++) {
        digit[d] = ((k + 128) & 255) - 128;
        k = (k - digit[d]) >> 8;
    }
    digit[2] = k;
    return k >= -128 && k <= 127;  // |k| < 2^23: normalized bicubic weights stay well below 2
}

// Fills the grouped form of c for groups of taps (2 or 4) taps. aligned: groups begin on multiples of
// taps (the horizontal kernels transpose fixed pixel groups); otherwise at start (the vertical
// kernels group rows freely). Returns false if a weight does not split into digits.
bool make_groups(Coeffs& c, int taps, bool aligned) {
    const int out_size = static_cast<int>(c.start.size());
    const int ndigits = taps == 2 ? 2 : 3, bits = 32 / taps;
    c.kgroups = (c.ksize + 2 * taps - 2) / taps;
    c.group_first.resize(out_size);
    c.ngroups.resize(out_size);
    c.digits.assign(static_cast<size_t>(out_size) * c.kgroups * ndigits, 0);
    for (int i = 0; i < out_size; i++) {
        const int skip = aligned ? c.start[i] % taps : 0;
        c.group_first[i] = c.start[i] - skip;
        c.ngroups[i] = (skip + c.count[i] + taps - 1) / taps;
        const int32_t* k = &c.k[static_cast<size_t>(i) * c.ksize];
        uint32_t* dst = &c.digits[static_cast<size_t>(i) * c.kgroups * ndigits];
        for (int x = 0; x < c.count[i]; x++) {
            int32_t digit[3];
            if (!split_weight(k[x], taps, digit)) return false;
            const int slot = skip + x;
            for (int d = 0; d < ndigits; d++) {
                const uint32_t v = static_cast<uint32_t>(digit[d]) & ((1ULL << bits) - 1);
                dst[(slot / taps) * ndigits + d] |= v << (slot % taps * bits);
            }
        }
    }
    return true;
}

Coeffs precompute_coeffs(int in_size, int out_size) {
    const double support_base = 2.0;  // BICUBIC
    // Pillow: (double)(in1 - in0) / outSize with float in0/in1; exact for sizes < 2^24.
    double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = support_base * filterscale;
    Coeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.start.resize(out_size);
    c.count.resize(out_size);
    c.k.assign(static_cast<size_t>(out_size) * c.ksize, 0);
    std::vector<double> w(c.ksize);
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        for (int x = 0; x < xmax; x++) {
            double v = bicubic_filter((x + xmin - center + 0.5) * ss);
            w[x] = v;
            ww += v;
        }
        for (int x = 0; x < xmax; x++) {
            if (ww != 0.0) w[x] /= ww;
        }
        int32_t* kk = &c.k[static_cast<size_t>(xx) * c.ksize];
        for (int x = 0; x < xmax; x++) {
            double p = w[x];
            kk[x] = p < 0 ? static_cast<int32_t>(-0.5 + p * (1 << kPrecisionBits))
                          : static_cast<int32_t>(0.5 + p * (1 << kPrecisionBits));
        }
        c.start[xx] = xmin;
        c.count[xx] = xmax;
    }
    return c;
}

// Portable SIMD through GCC/Clang vector extensions (lowered to SSE2, NEON, ...): kernels.inc. On
// x86-64 with GCC, madd_kernels.inc is compiled for AVX2 and AVX-512 (#pragma GCC target), and the
// widest kernel set the CPU supports is picked once at run time.
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));

constexpr int kRows = 8;           // rows per horizontal block
constexpr int kLanes = kRows * 4;  // 32 int32 lanes: 8 rows x (RGB + one junk byte)
constexpr int kRowPad = 4;         // slack after each intermediate row (overlapping 4-byte stores)

// Patch p of block row bh (28 resized rows): its first pixel in the block, its place in the output.
// In HF's layout the patches of a block row are contiguous, (w/28) x 2 x 2 patches of (C, T, 14, 14).
inline const uint8_t* patch_src(const uint8_t* block, int p, size_t row_len) {
    const int bw = p / (kMerge * kMerge), mh = p / kMerge % kMerge, mw = p % kMerge;
    return block + static_cast<size_t>(mh * kPatch) * row_len + static_cast<size_t>(bw * kFactor + mw * kPatch) * 3;
}
inline float* patch_dst(float* patches, int bh, int p, int out_w) {
    return patches + (static_cast<size_t>(bh) * (out_w / kFactor) * kMerge * kMerge + p) * kPatchDim;
}

// Writes the patches of block row bh, normalized through lut: one sequential run of the output.
void emit_patch_block_scalar(const uint8_t* block, int bh, int out_w, const float* __restrict lut,
                             float* __restrict patches, bool /*stream*/) {
    const size_t row_len = static_cast<size_t>(out_w) * 3;
    for (int p = 0; p < out_w / kFactor * kMerge * kMerge; p++) {
        const uint8_t* src = patch_src(block, p, row_len);
        float* __restrict d = patch_dst(patches, bh, p, out_w);
        for (int c = 0; c < kChannels; c++, d += kTemporal * kPatch * kPatch) {
            const float* __restrict l = lut + c * 256;
            for (int ph = 0; ph < kPatch; ph++) {
                const uint8_t* __restrict s = src + ph * row_len + c;
                for (int pw = 0; pw < kPatch; pw++) d[ph * kPatch + pw] = l[s[pw * 3]];
            }
            // t = 1: the single frame repeated to temporal_patch_size.
            std::memcpy(d + kPatch * kPatch, d, sizeof(float) * kPatch * kPatch);
        }
    }
}

struct Kernels {
    void (*horizontal_block)(const uint8_t* const*, int, int, uint8_t* const*, int, const Coeffs&, uint8_t*);
    void (*vertical_row)(const uint8_t* const*, const Coeffs&, int, int, uint8_t*);
    void (*emit_patch_block)(const uint8_t*, int, int, const float*, float*, bool stream);
    int taps;  // tap group size of the grouped weights (Coeffs::digits) the kernels use; 0: none
    const char* name;
};

// Scratch for one horizontal_block call (any kernel set): transposed input (at most 64 bytes per
// pixel, plus 4 + kgroups groups of slack) and transposed output (32 bytes per pixel, rounded up to 16).
class Scratch {
  public:
    Scratch(int in_w, int out_w, int kgroups)
        : buf_(static_cast<size_t>(in_w + 16 + 4 * kgroups) * 64 + static_cast<size_t>(out_w + 16) * 32 + 64) {}
    uint8_t* data() {  // 64-byte aligned
        const uintptr_t p = reinterpret_cast<uintptr_t>(buf_.data());
        return buf_.data() + ((64 - p % 64) % 64);
    }

  private:
    std::vector<uint8_t> buf_;
};

namespace generic {
typedef i32x8 vec;
constexpr int kVec = 8;
__attribute__((always_inline)) inline vec splat(int32_t v) { return vec{v, v, v, v, v, v, v, v}; }
typedef uint16_t u16x8 __attribute__((vector_size(16)));
__attribute__((always_inline)) inline vec load_vec(const uint8_t* p) {
    u8x8 v;
    std::memcpy(&v, p, sizeof(v));
    return __builtin_convertvector(__builtin_convertvector(v, u16x8), vec);
}
__attribute__((always_inline)) inline void store_clip(vec acc, uint8_t* out) {
    acc >>= kPrecisionBits;
    acc = acc < 0 ? 0 : acc;
    acc = acc > 255 ? 255 : acc;
    u8x8 v = __builtin_convertvector(acc, u8x8);
    std::memcpy(out, &v, sizeof(v));
}
// Scalar transpose: 4-byte copies per pixel; the last pixel takes 3 so no read passes the row end.
inline void transpose_rows(const uint8_t* const* in_rows, int nrows, int in_w, uint8_t* __restrict t) {
    const int last = in_w - 1;
    for (int x = 0; x < last; x++) {
        uint8_t* d = t + static_cast<size_t>(x) * kLanes;
        for (int r = 0; r < nrows; r++) std::memcpy(d + r * 4, in_rows[r] + x * 3, 4);
    }
    uint8_t* d = t + static_cast<size_t>(last) * kLanes;
    for (int r = 0; r < nrows; r++) std::memcpy(d + r * 4, in_rows[r] + last * 3, 3);
}
#include "kernels.inc"
}  // namespace generic

#if defined(COF_X86_SIMD)
// AVX2: int16 pixel pairs (pmaddwd). AVX-512: uint8 pixel quads (vpdpbusd), byte permutes (VBMI).
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
typedef int32_t vec __attribute__((vector_size(32)));
constexpr int kVec = 8;
constexpr int kStep = 1;  // output pixels per horizontal step: 8 accumulators already, 16 registers
constexpr int kTaps = 2;  // int16 pixel pairs x int16 digits (pmaddwd)
constexpr int kDigits = 2;
constexpr int kDigitShift[kDigits] = {0, 11};
__attribute__((always_inline)) inline __m256i m(vec v) { return reinterpret_cast<__m256i>(v); }
__attribute__((always_inline)) inline vec v(__m256i x) { return reinterpret_cast<vec>(x); }
__attribute__((always_inline)) inline vec splat(uint32_t x) { return v(_mm256_set1_epi32(static_cast<int>(x))); }
__attribute__((always_inline)) inline vec load(const uint8_t* p) {
    return v(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((always_inline)) inline void store(vec x, uint8_t* p) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), m(x));
}
__attribute__((always_inline)) inline vec load_bytes(const uint8_t* p, int n) {
    alignas(32) uint8_t b[32] = {};
    std::memcpy(b, p, n);
    return load(b);
}
__attribute__((always_inline)) inline void store_bytes(vec x, uint8_t* p, int n) {
    alignas(32) uint8_t b[32];
    store(x, b);
    std::memcpy(p, b, n);
}
__attribute__((always_inline)) inline vec madd_acc(vec acc, vec a, vec b) { return acc + v(_mm256_madd_epi16(m(a), m(b))); }

// A transposed pixel pair is 4 vectors; vector i holds rows i (low 128 bits) and i + 4 (high), each
// as 4 channel lanes of (int16 pixel 2j, int16 pixel 2j + 1). Byte offset of pixel 2j + q:
constexpr int group_slot(int r, int ch, int q) { return (r & 3) * 32 + (r >> 2) * 16 + ch * 4 + q * 2; }

// Two 8-lane gathers (pixels 2j and 2j + 1, 4 bytes per row; rows past nrows repeat row 0), then
// byte interleaves. Returns the number of pairs done (the last one is left to transpose_last_groups).
inline int transpose_groups(const uint8_t* const* in_rows, int nrows, int in_w, uint8_t* __restrict t) {
    const uint8_t* base = in_rows[0];
    alignas(32) int32_t off[kRows];
    for (int r = 0; r < kRows; r++) off[r] = static_cast<int32_t>(in_rows[r < nrows ? r : 0] - base);
    __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(off));
    const __m256i three = _mm256_set1_epi32(3), six = _mm256_set1_epi32(6), zero = _mm256_setzero_si256();
    const int pairs = (in_w - 1) / 2;
    for (int j = 0; j < pairs; j++, t += 128) {
        const __m256i g0 = _mm256_i32gather_epi32(reinterpret_cast<const int*>(base), idx, 1);
        const __m256i g1 = _mm256_i32gather_epi32(reinterpret_cast<const int*>(base), _mm256_add_epi32(idx, three), 1);
        idx = _mm256_add_epi32(idx, six);
        const __m256i lo = _mm256_unpacklo_epi8(g0, g1), hi = _mm256_unpackhi_epi8(g0, g1);
        __m256i* d = reinterpret_cast<__m256i*>(t);
        _mm256_storeu_si256(d, _mm256_unpacklo_epi8(lo, zero));
        _mm256_storeu_si256(d + 1, _mm256_unpackhi_epi8(lo, zero));
        _mm256_storeu_si256(d + 2, _mm256_unpacklo_epi8(hi, zero));
        _mm256_storeu_si256(d + 3, _mm256_unpackhi_epi8(hi, zero));
    }
    return pairs;
}

// r[i]: rows i | i + 4 (int32). Saturating packs give rows 0..7 x RGBx as 32 bytes, clipped to 0..255.
__attribute__((always_inline)) inline void pack_pixel(const vec* r, uint8_t* u) {
    const __m256i p01 = _mm256_packs_epi32(m(r[0]), m(r[1])), p23 = _mm256_packs_epi32(m(r[2]), m(r[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u), _mm256_packus_epi16(p01, p23));
}

// u: 32 bytes (rows 0..7 x RGBx) per output pixel. Per row, 8 pixels at a time: gather their RGBx
// dwords, drop the x bytes, store 24 bytes.
inline void untranspose(const uint8_t* u, int nrows, int out_w, uint8_t* const* out_rows) {
    const __m256i idx = _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224);
    const __m256i rgb = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,  //
                                         0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    const __m256i join = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7);
    const __m256i six = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
    for (int x0 = 0; x0 < out_w; x0 += 8, u += 8 * kLanes) {
        for (int r = 0; r < nrows; r++) {
            __m256i g = _mm256_i32gather_epi32(reinterpret_cast<const int*>(u + r * 4), idx, 1);
            g = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(g, rgb), join);
            uint8_t* d = out_rows[r] + x0 * 3;
            if (x0 + 8 <= out_w) _mm256_maskstore_epi32(reinterpret_cast<int*>(d), six, g);
            else store_bytes(v(g), d, (out_w - x0) * 3);
        }
    }
}

// x[0], x[1]: 32 bytes of two rows. w[i] lanes: (int16 x0[e], int16 x1[e]) for the elements
// e = 16 * half + 4 * i + (0..3); narrow_rows packs the 4 results back in byte order.
__attribute__((always_inline)) inline void widen_rows(const vec* x, vec* w) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i lo = _mm256_unpacklo_epi8(m(x[0]), m(x[1])), hi = _mm256_unpackhi_epi8(m(x[0]), m(x[1]));
    w[0] = v(_mm256_unpacklo_epi8(lo, zero));
    w[1] = v(_mm256_unpackhi_epi8(lo, zero));
    w[2] = v(_mm256_unpacklo_epi8(hi, zero));
    w[3] = v(_mm256_unpackhi_epi8(hi, zero));
}
__attribute__((always_inline)) inline vec narrow_rows(const vec* r) {
    const __m256i p01 = _mm256_packs_epi32(m(r[0]), m(r[1])), p23 = _mm256_packs_epi32(m(r[2]), m(r[3]));
    return v(_mm256_packus_epi16(p01, p23));
}
#include "madd_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,bmi2,avx512f,avx512bw,avx512vbmi,avx512vnni")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive inside avx512fintrin.h
namespace avx512 {
typedef int32_t vec __attribute__((vector_size(64)));
constexpr int kVec = 16;
constexpr int kStep = 2;  // output pixels per horizontal step: independent chains hide vpdpbusd's latency
constexpr int kTaps = 4;  // uint8 pixel quads x int8 digits (vpdpbusd)
constexpr int kDigits = 3;
constexpr int kDigitShift[kDigits] = {0, 8, 16};
__attribute__((always_inline)) inline __m512i m(vec v) { return reinterpret_cast<__m512i>(v); }
__attribute__((always_inline)) inline vec v(__m512i x) { return reinterpret_cast<vec>(x); }
__attribute__((always_inline)) inline vec splat(uint32_t x) { return v(_mm512_set1_epi32(static_cast<int>(x))); }
__attribute__((always_inline)) inline vec load(const uint8_t* p) { return v(_mm512_loadu_si512(p)); }
__attribute__((always_inline)) inline void store(vec x, uint8_t* p) { _mm512_storeu_si512(p, m(x)); }
__attribute__((always_inline)) inline __mmask64 first_bytes(int n) { return _bzhi_u64(~0ULL, n); }
__attribute__((always_inline)) inline vec load_bytes(const uint8_t* p, int n) {
    return v(_mm512_maskz_loadu_epi8(first_bytes(n), p));
}
__attribute__((always_inline)) inline void store_bytes(vec x, uint8_t* p, int n) {
    _mm512_mask_storeu_epi8(p, first_bytes(n), m(x));
}
// Weights as 3 signed bytes, pixels as unsigned bytes: 4 taps per vpdpbusd (VNNI, no saturation).
__attribute__((always_inline)) inline vec madd_acc(vec acc, vec a, vec b) {
    return v(_mm512_dpbusd_epi32(m(acc), m(a), m(b)));
}

// A transposed pixel quad is 2 vectors: even rows, then odd rows; 128-bit block k holds row 2k (+1)
// as 4 channel lanes of (uint8 pixels 4j .. 4j + 3). Byte offset of pixel 4j + q:
constexpr int group_slot(int r, int ch, int q) { return (r & 1) * 64 + (r >> 1) * 16 + ch * 4 + q; }

// 16 pixels (4 quads) of 8 rows per step: one byte permute per row spreads its quads to the 128-bit
// blocks, two 4 x 4 block transposes (even, odd rows) give the quads. Masked loads read zeros past the
// row end (rows past nrows repeat row 0). Returns the number of quads written (ceil(in_w / 4) or up
// to 3 more: the slack groups).
inline int transpose_groups(const uint8_t* const* in_rows, int nrows, int in_w, uint8_t* __restrict t) {
    alignas(64) uint8_t spread[64];
    for (int p = 0; p < 4; p++)
        for (int ch = 0; ch < 4; ch++)
            for (int q = 0; q < 4; q++) spread[p * 16 + ch * 4 + q] = static_cast<uint8_t>(12 * p + 3 * q + ch);
    const __m512i idx = _mm512_load_si512(spread);
    const uint8_t* rows[kRows];
    for (int r = 0; r < kRows; r++) rows[r] = in_rows[r < nrows ? r : 0];
    const int steps = (in_w + 15) / 16;
    for (int k = 0; k < steps; k++, t += 4 * 128) {
        const __mmask64 bytes = first_bytes(std::min(48, 3 * in_w - 48 * k));
        __m512i x[kRows];
        for (int r = 0; r < kRows; r++)
            x[r] = _mm512_permutexvar_epi8(idx, _mm512_maskz_loadu_epi8(bytes, rows[r] + 48 * k));
        for (int h = 0; h < 2; h++) {  // even rows, odd rows
            const __m512i t0 = _mm512_shuffle_i64x2(x[h], x[h + 2], 0x44), t1 = _mm512_shuffle_i64x2(x[h], x[h + 2], 0xEE);
            const __m512i t2 = _mm512_shuffle_i64x2(x[h + 4], x[h + 6], 0x44), t3 = _mm512_shuffle_i64x2(x[h + 4], x[h + 6], 0xEE);
            uint8_t* o = t + h * 64;
            _mm512_storeu_si512(o, _mm512_shuffle_i64x2(t0, t2, 0x88));
            _mm512_storeu_si512(o + 128, _mm512_shuffle_i64x2(t0, t2, 0xDD));
            _mm512_storeu_si512(o + 256, _mm512_shuffle_i64x2(t1, t3, 0x88));
            _mm512_storeu_si512(o + 384, _mm512_shuffle_i64x2(t1, t3, 0xDD));
        }
    }
    return steps * 4;
}

// r[0]: even rows, r[1]: odd rows (int32). Saturating packs interleave them per block (row 2k, 2k + 1);
// the qword permute then gives rows 0..7 x RGBx as 32 bytes, clipped to 0..255.
__attribute__((always_inline)) inline void pack_pixel(const vec* r, uint8_t* u) {
    const __m512i p16 = _mm512_packs_epi32(m(r[0]), m(r[1]));
    const __m512i p8 = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 0, 2, 4, 6), _mm512_packus_epi16(p16, p16));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u), _mm512_castsi512_si256(p8));
}

// u: 32 bytes (rows 0..7 x RGBx) per output pixel. 16 pixels at a time, 8 vectors (pixels 2j, 2j + 1)
// are transposed to 8 rows x 16 RGBx dwords by 3 rounds of 2-source dword permutes, each moving one
// bit of the row index from the lane to the vector index and one pixel bit the other way; then the x
// bytes are dropped (vpermb) and 48 bytes stored per row.
inline void untranspose(const uint8_t* u, int nrows, int out_w, uint8_t* const* out_rows) {
    alignas(64) int32_t idx[3][2][16];  // [round][output of the pair][lane]: source lane (+16: 2nd source)
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 16; l++) {
            const int b3 = l >> 3 & 1, b2 = l >> 2 & 1, b1 = l >> 1 & 1, b0 = l & 1;
            idx[0][h][l] = b3 * 16 + b2 * 8 + h * 4 + (l & 3);
            idx[1][h][l] = b3 * 16 + b2 * 8 + b1 * 4 + h * 2 + b0;
            idx[2][h][l] = b3 * 16 + b2 * 8 + b1 * 4 + b0 * 2 + h;
        }
    __m512i perm[3][2];
    for (int k = 0; k < 3; k++)
        for (int h = 0; h < 2; h++) perm[k][h] = _mm512_load_si512(idx[k][h]);
    alignas(64) uint8_t rgb[64] = {};
    for (int i = 0; i < 16; i++)
        for (int ch = 0; ch < 3; ch++) rgb[i * 3 + ch] = static_cast<uint8_t>(i * 4 + ch);
    const __m512i drop_x = _mm512_load_si512(rgb);
    for (int x0 = 0; x0 < out_w; x0 += 16, u += 16 * kLanes) {
        __m512i a[8], b[8];
        for (int j = 0; j < 8; j++) a[j] = _mm512_loadu_si512(u + 64 * j);
        // Round k pairs the vectors whose index differs in bit k (a[] index bits: pixel 3..1, then rows).
        for (int i = 0; i < 4; i++)
            for (int h = 0; h < 2; h++) b[2 * i + h] = _mm512_permutex2var_epi32(a[2 * i], perm[0][h], a[2 * i + 1]);
        for (int i = 0; i < 2; i++)
            for (int r2 = 0; r2 < 2; r2++)
                for (int h = 0; h < 2; h++)
                    a[4 * i + 2 * h + r2] = _mm512_permutex2var_epi32(b[4 * i + r2], perm[1][h], b[4 * i + 2 + r2]);
        for (int v = 0; v < 4; v++)
            for (int h = 0; h < 2; h++) b[4 * h + v] = _mm512_permutex2var_epi32(a[v], perm[2][h], a[4 + v]);
        const __mmask64 bytes = first_bytes(std::min(16, out_w - x0) * 3);
        for (int r = 0; r < nrows; r++) {  // row r = 4 r2 + 2 r1 + r0 sits in b[4 r0 + 2 r1 + r2]
            const __m512i row = b[(r & 1) * 4 + (r & 2) + (r >> 2)];
            _mm512_mask_storeu_epi8(out_rows[r] + x0 * 3, bytes, _mm512_permutexvar_epi8(drop_x, row));
        }
    }
}

// x[0..3]: 64 bytes of four rows. w[i] lanes: (x0[e], x1[e], x2[e], x3[e]) for the elements
// e = 16 * block + 4 * i + (0..3), the same order as avx2::widen_rows, so narrow_rows is the same.
__attribute__((always_inline)) inline void widen_rows(const vec* x, vec* w) {
    const __m512i ab_lo = _mm512_unpacklo_epi8(m(x[0]), m(x[1])), ab_hi = _mm512_unpackhi_epi8(m(x[0]), m(x[1]));
    const __m512i cd_lo = _mm512_unpacklo_epi8(m(x[2]), m(x[3])), cd_hi = _mm512_unpackhi_epi8(m(x[2]), m(x[3]));
    w[0] = v(_mm512_unpacklo_epi16(ab_lo, cd_lo));
    w[1] = v(_mm512_unpackhi_epi16(ab_lo, cd_lo));
    w[2] = v(_mm512_unpacklo_epi16(ab_hi, cd_hi));
    w[3] = v(_mm512_unpackhi_epi16(ab_hi, cd_hi));
}
__attribute__((always_inline)) inline vec narrow_rows(const vec* r) {
    const __m512i p01 = _mm512_packs_epi32(m(r[0]), m(r[1])), p23 = _mm512_packs_epi32(m(r[2]), m(r[3]));
    return v(_mm512_packus_epi16(p01, p23));
}
#include "madd_kernels.inc"

// One patch (C, T, 14, 14) into p: per patch row, a byte permute spreads one channel's levels to dword
// lanes and a masked gather looks them up in the channel's 256-float table; t = 1 repeats t = 0.
__attribute__((always_inline)) inline void build_patch(const uint8_t* src, size_t row_len, const float* lut,
                                                        const __m512i* pick, float* __restrict p) {
    constexpr int plane = kPatch * kPatch;
    const __mmask64 row_bytes = first_bytes(kPatch * 3), low_bytes = 0x1111111111111111ULL;
    const __mmask16 row_lanes = (1 << kPatch) - 1;
    for (int ph = 0; ph < kPatch; ph++) {
        const __m512i px = _mm512_maskz_loadu_epi8(row_bytes, src + ph * row_len);
        for (int c = 0; c < kChannels; c++) {
            const __m512i idx = _mm512_maskz_permutexvar_epi8(low_bytes, pick[c], px);
            const __m512 val = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), row_lanes, idx, lut + c * 256, 4);
            float* o = p + c * kTemporal * plane + ph * kPatch;
            _mm512_mask_storeu_ps(o, row_lanes, val);
            _mm512_mask_storeu_ps(o + plane, row_lanes, val);
        }
    }
}

// Copies a patch from p to d. kStream: non-temporal stores for the 64-byte aligned part, as the
// output is written once and is much larger than the caches (this skips reading it in first).
template <bool kStream>
__attribute__((always_inline)) inline void store_patch(float* __restrict d, const float* __restrict p) {
    int i = 0;
    if (kStream) {
        i = static_cast<int>((64 - reinterpret_cast<uintptr_t>(d) % 64) % 64 / sizeof(float));
        _mm512_mask_storeu_ps(d, static_cast<__mmask16>((1u << i) - 1), _mm512_loadu_ps(p));
    }
    for (; i + 16 <= kPatchDim; i += 16) {
        if (kStream) _mm512_stream_ps(d + i, _mm512_loadu_ps(p + i));
        else _mm512_storeu_ps(d + i, _mm512_loadu_ps(p + i));
    }
    _mm512_mask_storeu_ps(d + i, static_cast<__mmask16>((1u << (kPatchDim - i)) - 1), _mm512_loadu_ps(p + i));
}

// emit_patch_block_scalar, one patch at a time through a buffer in L1 (the masked 14-float stores go
// there; the output gets whole vectors).
void emit_patch_block(const uint8_t* block, int bh, int out_w, const float* __restrict lut, float* __restrict patches,
                      bool stream) {
    const size_t row_len = static_cast<size_t>(out_w) * 3;
    alignas(64) uint8_t sel[kChannels][64] = {};
    for (int c = 0; c < kChannels; c++)
        for (int pw = 0; pw < kPatch; pw++) sel[c][pw * 4] = static_cast<uint8_t>(pw * 3 + c);
    __m512i pick[kChannels];
    for (int c = 0; c < kChannels; c++) pick[c] = _mm512_load_si512(sel[c]);
    alignas(64) float buf[kPatchDim + 16];
    float* d = patch_dst(patches, bh, 0, out_w);
    for (int p = 0; p < out_w / kFactor * kMerge * kMerge; p++, d += kPatchDim) {
        build_patch(patch_src(block, p, row_len), row_len, lut, pick, buf);
        if (stream) store_patch<true>(d, buf);
        else store_patch<false>(d, buf);
    }
    if (stream) _mm_sfence();
}
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

constexpr Kernels kGenericKernels = {generic::horizontal_block, generic::vertical_row, emit_patch_block_scalar, 0,
                                     "generic"};

Kernels select_kernels() {
    const char* force = std::getenv("COF_EDGE_PREPROCESS_ISA");  // "generic" | "avx2" | "avx512"
    std::string want = force ? force : "";
#if defined(COF_X86_SIMD)
    __builtin_cpu_init();
    const bool has2 = __builtin_cpu_supports("avx2");
    const bool has512 = has2 && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi") &&
                        __builtin_cpu_supports("avx512vnni");
    if (has512 && (want.empty() || want == "avx512"))
        return {avx512::horizontal_block, avx512::vertical_row, avx512::emit_patch_block, avx512::kTaps, "avx512"};
    if (has2 && (want.empty() || want == "avx2" || want == "avx512"))
        return {avx2::horizontal_block, avx2::vertical_row, emit_patch_block_scalar, avx2::kTaps, "avx2"};
#endif
    return kGenericKernels;
}

const Kernels& kernels() {
    static const Kernels k = select_kernels();
    return k;
}

struct Job {
    const uint8_t* src = nullptr;  // first pixel of the crop
    ptrdiff_t src_stride = 0;      // bytes between rows of the source array
    int in_w = 0, in_h = 0;        // crop size
    int out_w = 0, out_h = 0;
    bool need_h = true, need_v = true;
    bool vertical_first = false;  // pass order (see run_rows)
    const Kernels* kern = nullptr;
    Coeffs ch, cv;
    const float* lut = nullptr;  // 3 * 256, or null for the uint8 output mode
    float* patches = nullptr;
    bool stream = false;  // non-temporal stores for the patches (a large output)
    uint8_t* out_u8 = nullptr;  // out_h * out_w * 3 when lut is null
};

// Output rows [r0, r1) of a job.
void run_rows(const Job& job, int r0, int r1) {
    const Kernels& kern = *job.kern;
    const int row_len = job.out_w * 3;
    std::vector<uint8_t> block(job.lut ? static_cast<size_t>(kFactor) * row_len : 0);  // 28 rows
    auto dst_row = [&](int yy) -> uint8_t* {
        return job.lut ? block.data() + static_cast<size_t>(yy % kFactor) * row_len
                       : job.out_u8 + static_cast<size_t>(yy) * row_len;
    };
    auto finish_row = [&](int yy) {
        if (job.lut && yy % kFactor == kFactor - 1)
            kern.emit_patch_block(block.data(), yy / kFactor, job.out_w, job.lut, job.patches, job.stream);
    };
    std::vector<const uint8_t*> rows(job.cv.ksize + 1);

    if (job.need_h && job.need_v && job.vertical_first) {
        // Pillow >= 13 when the height shrinks more than twice as much as the width: vertical pass on
        // the source rows first (full crop width), then the horizontal pass, kRows rows at a time.
        const size_t vstride = static_cast<size_t>(job.in_w) * 3 + kRowPad;
        std::vector<uint8_t> vbuf(static_cast<size_t>(kRows) * vstride);
        Scratch scratch(job.in_w, job.out_w, job.ch.kgroups);
        for (int y0 = r0; y0 < r1;) {
            int nb = std::min(kRows, r1 - y0);
            if (job.lut) nb = std::min(nb, kFactor - y0 % kFactor);  // never straddle a 28-row block
            const uint8_t* in_rows[kRows];
            uint8_t* out_rows[kRows];
            for (int r = 0; r < nb; r++) {
                const int yy = y0 + r, ys = job.cv.start[yy], n = job.cv.count[yy];
                for (int y = 0; y < n; y++) rows[y] = job.src + static_cast<ptrdiff_t>(ys + y) * job.src_stride;
                uint8_t* v = vbuf.data() + r * vstride;
                kern.vertical_row(rows.data(), job.cv, yy, job.in_w * 3, v);
                in_rows[r] = v;
                out_rows[r] = dst_row(yy);
            }
            kern.horizontal_block(in_rows, nb, job.in_w, out_rows, job.out_w, job.ch, scratch.data());
            for (int r = 0; r < nb; r++) finish_row(y0 + r);
            y0 += nb;
        }
        return;
    }

    // Horizontal pass first (Pillow's classic order). Horizontal rows are produced on demand, kRows at
    // a time, into a small ring buffer (the vertical window only moves forward), so the intermediate
    // image stays in cache.
    const int ring = job.need_h ? job.cv.ksize + kRows : 0;
    const size_t ring_stride = static_cast<size_t>(row_len) + kRowPad;
    std::vector<uint8_t> ring_buf(static_cast<size_t>(ring) * ring_stride);
    Scratch scratch(job.need_h ? job.in_w : 0, job.need_h ? job.out_w : 0, job.ch.kgroups);
    // The last input row this band needs (exclusive): never compute rows past it.
    const int need_end = job.need_v ? job.cv.start[r1 - 1] + job.cv.count[r1 - 1] : r1;
    int next = -1;  // ring holds input rows [next - ring, next)

    auto hrow = [&](int iy) -> const uint8_t* {
        if (!job.need_h) return job.src + static_cast<ptrdiff_t>(iy) * job.src_stride;
        if (next < 0 || iy < next - ring || iy > next) next = iy;  // (re)start the window
        while (next <= iy) {
            const int nb = std::min(kRows, need_end - next);
            const uint8_t* in_rows[kRows];
            uint8_t* out_rows[kRows];
            for (int r = 0; r < nb; r++) {
                in_rows[r] = job.src + static_cast<ptrdiff_t>(next + r) * job.src_stride;
                out_rows[r] = ring_buf.data() + static_cast<size_t>((next + r) % ring) * ring_stride;
            }
            kern.horizontal_block(in_rows, nb, job.in_w, out_rows, job.out_w, job.ch, scratch.data());
            next += nb;
        }
        return ring_buf.data() + static_cast<size_t>(iy % ring) * ring_stride;
    };

    for (int yy = r0; yy < r1; yy++) {
        uint8_t* dst = dst_row(yy);
        if (job.need_v) {
            const int y0 = job.cv.start[yy], n = job.cv.count[yy];
            for (int y = 0; y < n; y++) rows[y] = hrow(y0 + y);
            kern.vertical_row(rows.data(), job.cv, yy, row_len, dst);
        } else {
            std::memcpy(dst, hrow(yy), row_len);
        }
        finish_row(yy);
    }
}

void run_job(const Job& job, int threads) {
    // Bands of whole 28-row blocks so that threads never share a patch row block.
    const int blocks = (job.out_h + kFactor - 1) / kFactor;
    long long work = static_cast<long long>(job.out_w) * job.out_h + static_cast<long long>(job.in_w) * job.in_h / 4;
    int nt = std::max(1, std::min(threads, blocks));
    if (work < 600000) nt = 1;  // spawning threads (~50-100 us) costs more than it saves
    if (nt == 1) {
        run_rows(job, 0, job.out_h);
        return;
    }
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errors(nt);
    for (int t = 0; t < nt; t++) {
        int r0 = std::min(job.out_h, static_cast<int>(static_cast<long long>(blocks) * t / nt) * kFactor);
        int r1 = std::min(job.out_h, static_cast<int>(static_cast<long long>(blocks) * (t + 1) / nt) * kFactor);
        auto body = [&job, &errors, t, r0, r1] {
            try {
                run_rows(job, r0, r1);
            } catch (...) {
                errors[t] = std::current_exception();
            }
        };
        if (t == nt - 1) {
            body();
        } else {
            try {
                pool.emplace_back(body);
            } catch (...) {  // could not start a thread: do that band here
                body();
            }
        }
    }
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

struct Buffer {
    Py_buffer view{};
    bool held = false;
    ~Buffer() {
        if (held) PyBuffer_Release(&view);
    }
    bool get(PyObject* obj, int flags, Py_ssize_t need_bytes, const char* name) {
        if (PyObject_GetBuffer(obj, &view, flags) != 0) return false;
        held = true;
        if (view.len < need_bytes) {
            PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, need %zd", name, view.len, need_bytes);
            return false;
        }
        return true;
    }
};

// run(src, height, width, x1, y1, x2, y2, out_h, out_w, lut_or_None, out, threads[, order_rule])
//   src: C-contiguous uint8 buffer of height*width*3; crop [x1, x2) x [y1, y2).
//   lut None: out is uint8 out_h*out_w*3 (resized pixels). Otherwise lut is float32[3*256] and out is
//   float32 [(out_h/14)*(out_w/14), 1176]. order_rule: 1 = Pillow >= 13 pass order (default), 0 = always
//   horizontal first (older Pillow).
PyObject* py_run(PyObject*, PyObject* args) {
    PyObject *src_obj, *lut_obj, *out_obj;
    int height, width, x1, y1, x2, y2, out_h, out_w, threads, order_rule = 1;
    if (!PyArg_ParseTuple(args, "OiiiiiiiiOOi|i", &src_obj, &height, &width, &x1, &y1, &x2, &y2, &out_h, &out_w,
                          &lut_obj, &out_obj, &threads, &order_rule))
        return nullptr;
    if (height <= 0 || width <= 0 || x1 < 0 || y1 < 0 || x2 > width || y2 > height || x2 <= x1 || y2 <= y1) {
        PyErr_SetString(PyExc_ValueError, "invalid image size or crop box");
        return nullptr;
    }
    if (out_h <= 0 || out_w <= 0) {
        PyErr_SetString(PyExc_ValueError, "invalid output size");
        return nullptr;
    }
    const bool u8 = lut_obj == Py_None;
    if (!u8 && (out_h % kFactor != 0 || out_w % kFactor != 0)) {
        PyErr_SetString(PyExc_ValueError, "output height and width must be multiples of 28");
        return nullptr;
    }
    Buffer src, lut, out;
    if (!src.get(src_obj, PyBUF_C_CONTIGUOUS, static_cast<Py_ssize_t>(height) * width * 3, "src")) return nullptr;
    if (!u8 && !lut.get(lut_obj, PyBUF_C_CONTIGUOUS, 3 * 256 * sizeof(float), "lut")) return nullptr;
    const Py_ssize_t out_bytes = u8 ? static_cast<Py_ssize_t>(out_h) * out_w * 3
                                    : static_cast<Py_ssize_t>(out_h / kPatch) * (out_w / kPatch) * kPatchDim *
                                          static_cast<Py_ssize_t>(sizeof(float));
    if (!out.get(out_obj, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE, out_bytes, "out")) return nullptr;

    Job job;
    job.src_stride = static_cast<ptrdiff_t>(width) * 3;
    job.src = static_cast<const uint8_t*>(src.view.buf) + static_cast<ptrdiff_t>(y1) * job.src_stride +
              static_cast<ptrdiff_t>(x1) * 3;
    job.in_w = x2 - x1;
    job.in_h = y2 - y1;
    job.out_w = out_w;
    job.out_h = out_h;
    job.lut = u8 ? nullptr : static_cast<const float*>(lut.view.buf);
    job.patches = u8 ? nullptr : static_cast<float*>(out.view.buf);
    job.stream = out_bytes >= kStreamBytes && reinterpret_cast<uintptr_t>(out.view.buf) % sizeof(float) == 0;
    job.out_u8 = u8 ? static_cast<uint8_t*>(out.view.buf) : nullptr;
    std::string error;
    Py_BEGIN_ALLOW_THREADS;
    try {
        // Pillow: need_horizontal = xsize != in xsize (box is the whole crop); same for vertical.
        job.need_h = job.out_w != job.in_w;
        job.need_v = job.out_h != job.in_h;
        // Pillow >= 13 (ImagingResampleInner): vertical pass first when the height shrinks by more than
        // twice as many pixels as the width; older Pillow always goes horizontal first (order_rule 0).
        const int dy = job.in_h - job.out_h, dx = job.in_w - job.out_w;
        job.vertical_first = order_rule == 1 && dy > 0 && dy > dx * 2;
        if (job.need_h) job.ch = precompute_coeffs(job.in_w, job.out_w);
        if (job.need_v) job.cv = precompute_coeffs(job.in_h, job.out_h);
        job.kern = &kernels();
        const int taps = job.kern->taps;
        if (taps && !((!job.need_h || make_groups(job.ch, taps, true)) && (!job.need_v || make_groups(job.cv, taps, false))))
            job.kern = &kGenericKernels;  // a weight too large to split (never for bicubic)
        if (!job.need_v) job.cv.ksize = 1;
        run_job(job, threads < 1 ? 1 : threads);
    } catch (const std::exception& e) {
        error = e.what();
        if (error.empty()) error = "native preprocessing failed";
    } catch (...) {
        error = "native preprocessing failed";
    }
    Py_END_ALLOW_THREADS;
    if (!error.empty()) {
        PyErr_SetString(PyExc_RuntimeError, error.c_str());
        return nullptr;
    }
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"run", py_run, METH_VARARGS,
     "run(src, height, width, x1, y1, x2, y2, out_h, out_w, lut_or_None, out, threads[, order_rule]): crop, Pillow-exact "
     "BICUBIC resize, then (lut given) normalize+patchify into out float32 [N, 1176], or (lut None) write the "
     "resized uint8 RGB pixels into out. Releases the GIL."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT,
                      "_preprocess",
                      "Native Qwen2-VL image preprocessing (see cof_edge.preprocess).",
                      -1,
                      methods,
                      nullptr,
                      nullptr,
                      nullptr,
                      nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__preprocess(void) {
    PyObject* m = PyModule_Create(&module);
    if (!m) return nullptr;
    PyModule_AddIntConstant(m, "PATCH_DIM", kPatchDim);
    PyModule_AddIntConstant(m, "ABI_VERSION", 1);
    PyModule_AddStringConstant(m, "ISA", kernels().name);
    return m;
}
