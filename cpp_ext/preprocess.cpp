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
};

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

// Portable SIMD through GCC/Clang vector extensions (lowered to SSE2, NEON, ...). On x86-64 with GCC
// the same kernels (kernels.inc) are compiled twice more, for AVX2 and AVX-512 (#pragma GCC target),
// and the widest the CPU supports is picked once at run time.
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint8_t u8x8 __attribute__((vector_size(8)));

constexpr int kRows = 8;           // rows per horizontal block
constexpr int kLanes = kRows * 4;  // 32 int32 lanes: 8 rows x (RGB + one junk byte)
constexpr int kRowPad = 4;         // slack after each intermediate row (overlapping 4-byte stores)

struct Kernels {
    void (*horizontal_block)(const uint8_t* const*, int, int, uint8_t* const*, int, const struct Coeffs&, uint8_t*);
    void (*vertical_row)(const uint8_t* const*, const int32_t*, int, int, uint8_t*);
    const char* name;
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
#pragma GCC push_options
#pragma GCC target("avx2")
namespace x86 {
// One 8-lane gather per pixel column (lane r = 4 bytes at row r); rows past nrows repeat row 0.
inline void transpose_rows(const uint8_t* const* in_rows, int nrows, int in_w, uint8_t* __restrict t) {
    const uint8_t* base = in_rows[0];
    alignas(32) int32_t off[kRows];
    for (int r = 0; r < kRows; r++) off[r] = static_cast<int32_t>(in_rows[r < nrows ? r : 0] - base);
    __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(off));
    const __m256i three = _mm256_set1_epi32(3);
    const int last = in_w - 1;
    for (int x = 0; x < last; x++) {
        __m256i v = _mm256_i32gather_epi32(reinterpret_cast<const int*>(base), idx, 1);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(t + static_cast<size_t>(x) * kLanes), v);
        idx = _mm256_add_epi32(idx, three);
    }
    uint8_t* d = t + static_cast<size_t>(last) * kLanes;
    for (int r = 0; r < nrows; r++) std::memcpy(d + r * 4, in_rows[r] + last * 3, 3);
}
}  // namespace x86

namespace avx2 {
typedef i32x8 vec;
constexpr int kVec = 8;
using x86::transpose_rows;
__attribute__((always_inline)) inline vec splat(int32_t v) { return vec{v, v, v, v, v, v, v, v}; }
__attribute__((always_inline)) inline vec load_vec(const uint8_t* p) {
    return reinterpret_cast<vec>(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
__attribute__((always_inline)) inline void store_clip(vec acc, uint8_t* out) {
    __m256i a = _mm256_srai_epi32(reinterpret_cast<__m256i>(acc), kPrecisionBits);
    __m256i p16 = _mm256_packs_epi32(a, a);      // int16, lanes (0..3,0..3 | 4..7,4..7)
    __m256i p8 = _mm256_packus_epi16(p16, p16);  // uint8 with saturation = clip to [0, 255]
    uint32_t lo = static_cast<uint32_t>(_mm256_extract_epi32(p8, 0));
    uint32_t hi = static_cast<uint32_t>(_mm256_extract_epi32(p8, 4));
    std::memcpy(out, &lo, 4);
    std::memcpy(out + 4, &hi, 4);
}
#include "kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512bw")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 false positive inside avx512fintrin.h
namespace avx512 {
typedef int32_t vec __attribute__((vector_size(64)));
constexpr int kVec = 16;
using x86::transpose_rows;
__attribute__((always_inline)) inline vec splat(int32_t v) { return reinterpret_cast<vec>(_mm512_set1_epi32(v)); }
__attribute__((always_inline)) inline vec load_vec(const uint8_t* p) {
    return reinterpret_cast<vec>(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
__attribute__((always_inline)) inline void store_clip(vec acc, uint8_t* out) {
    __m512i a = _mm512_srai_epi32(reinterpret_cast<__m512i>(acc), kPrecisionBits);
    a = _mm512_max_epi32(a, _mm512_setzero_si512());
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtusepi32_epi8(a));  // saturates at 255
}
#include "kernels.inc"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

Kernels select_kernels() {
    const char* force = std::getenv("COF_EDGE_PREPROCESS_ISA");  // "generic" | "avx2" | "avx512"
    std::string want = force ? force : "";
#if defined(COF_X86_SIMD)
    __builtin_cpu_init();
    const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    const bool has2 = __builtin_cpu_supports("avx2");
    if (has512 && (want.empty() || want == "avx512"))
        return {avx512::horizontal_block, avx512::vertical_row, "avx512"};
    if (has2 && (want.empty() || want == "avx2" || want == "avx512"))
        return {avx2::horizontal_block, avx2::vertical_row, "avx2"};
#endif
    return {generic::horizontal_block, generic::vertical_row, "generic"};
}

const Kernels& kernels() {
    static const Kernels k = select_kernels();
    return k;
}

// Writes one block of 28 resized uint8 RGB rows (block row bh) into the patch buffer, normalized
// through lut. In HF's layout the patches of one block row are contiguous ((w/28) x 2 x 2 patches of
// (C, T, 14, 14)), so this is one sequential write of out_w / 28 * 4 * 1176 floats.
void emit_patch_block(const uint8_t* block, int bh, int out_w, const float* __restrict lut,
                      float* __restrict patches) {
    const int gw2 = out_w / kFactor;
    const size_t row_len = static_cast<size_t>(out_w) * 3;
    float* __restrict d = patches + static_cast<size_t>(bh) * gw2 * kMerge * kMerge * kPatchDim;
    for (int bw = 0; bw < gw2; bw++) {
        for (int mh = 0; mh < kMerge; mh++) {
            for (int mw = 0; mw < kMerge; mw++) {
                const uint8_t* src = block + static_cast<size_t>(mh * kPatch) * row_len +
                                     static_cast<size_t>(bw * kFactor + mw * kPatch) * 3;
                for (int c = 0; c < kChannels; c++) {
                    const float* __restrict l = lut + c * 256;
                    float* __restrict d0 = d;
                    for (int ph = 0; ph < kPatch; ph++) {
                        const uint8_t* __restrict s = src + ph * row_len + c;
                        for (int pw = 0; pw < kPatch; pw++) d0[ph * kPatch + pw] = l[s[pw * 3]];
                    }
                    // t = 1: the single frame repeated to temporal_patch_size.
                    std::memcpy(d0 + kPatch * kPatch, d0, sizeof(float) * kPatch * kPatch);
                    d += kTemporal * kPatch * kPatch;
                }
            }
        }
    }
}

struct Job {
    const uint8_t* src = nullptr;  // first pixel of the crop
    ptrdiff_t src_stride = 0;      // bytes between rows of the source array
    int in_w = 0, in_h = 0;        // crop size
    int out_w = 0, out_h = 0;
    bool need_h = true, need_v = true;
    bool vertical_first = false;  // pass order (see run_rows)
    Coeffs ch, cv;
    const float* lut = nullptr;  // 3 * 256, or null for the uint8 output mode
    float* patches = nullptr;
    uint8_t* out_u8 = nullptr;  // out_h * out_w * 3 when lut is null
};

// Output rows [r0, r1) of a job.
void run_rows(const Job& job, int r0, int r1) {
    const Kernels& kern = kernels();
    const int row_len = job.out_w * 3;
    std::vector<uint8_t> block(job.lut ? static_cast<size_t>(kFactor) * row_len : 0);  // 28 rows
    auto dst_row = [&](int yy) -> uint8_t* {
        return job.lut ? block.data() + static_cast<size_t>(yy % kFactor) * row_len
                       : job.out_u8 + static_cast<size_t>(yy) * row_len;
    };
    auto finish_row = [&](int yy) {
        if (job.lut && yy % kFactor == kFactor - 1)
            emit_patch_block(block.data(), yy / kFactor, job.out_w, job.lut, job.patches);
    };
    std::vector<const uint8_t*> rows(job.cv.ksize + 1);

    if (job.need_h && job.need_v && job.vertical_first) {
        // Pillow >= 13 when the height shrinks more than twice as much as the width: vertical pass on
        // the source rows first (full crop width), then the horizontal pass, kRows rows at a time.
        const size_t vstride = static_cast<size_t>(job.in_w) * 3 + kRowPad;
        std::vector<uint8_t> vbuf(static_cast<size_t>(kRows) * vstride);
        std::vector<uint8_t> tbuf(static_cast<size_t>(job.in_w) * kLanes + 8);
        for (int y0 = r0; y0 < r1;) {
            int nb = std::min(kRows, r1 - y0);
            if (job.lut) nb = std::min(nb, kFactor - y0 % kFactor);  // never straddle a 28-row block
            const uint8_t* in_rows[kRows];
            uint8_t* out_rows[kRows];
            for (int r = 0; r < nb; r++) {
                const int yy = y0 + r, ys = job.cv.start[yy], n = job.cv.count[yy];
                for (int y = 0; y < n; y++) rows[y] = job.src + static_cast<ptrdiff_t>(ys + y) * job.src_stride;
                uint8_t* v = vbuf.data() + r * vstride;
                kern.vertical_row(rows.data(), &job.cv.k[static_cast<size_t>(yy) * job.cv.ksize], n, job.in_w * 3, v);
                in_rows[r] = v;
                out_rows[r] = dst_row(yy);
            }
            kern.horizontal_block(in_rows, nb, job.in_w, out_rows, job.out_w, job.ch, tbuf.data());
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
    std::vector<uint8_t> tbuf(job.need_h ? static_cast<size_t>(job.in_w) * kLanes + 8 : 0);
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
            kern.horizontal_block(in_rows, nb, job.in_w, out_rows, job.out_w, job.ch, tbuf.data());
            next += nb;
        }
        return ring_buf.data() + static_cast<size_t>(iy % ring) * ring_stride;
    };

    for (int yy = r0; yy < r1; yy++) {
        uint8_t* dst = dst_row(yy);
        if (job.need_v) {
            const int y0 = job.cv.start[yy], n = job.cv.count[yy];
            for (int y = 0; y < n; y++) rows[y] = hrow(y0 + y);
            kern.vertical_row(rows.data(), &job.cv.k[static_cast<size_t>(yy) * job.cv.ksize], n, row_len, dst);
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
