// Training-mode BatchNorm followed by ReLU over the channels of a row-major (rows, stride)
// array, float32 or bfloat16, with float32 arithmetic (included by onednn_conv.cc).
//
// DenseNet's layers normalise a prefix of their block's feature buffer: the first `channels` of
// each row's `stride` values. These kernels read that prefix in place (XLA would first copy it
// out) and the backward pass adds its input gradient into the block's gradient buffer in place
// (XLA's dynamic-update-slice of that sum ran single-threaded). With a = scale / sqrt(var + eps)
// and z = (x - mean) * a + bias, as Flax computes them:
//   forward      mean, var = mean(x), max(mean(x^2) - mean^2, 0);  y = max(z, 0)
//   backward     g' = g * [z > 0],  dbias = sum(g'),  dscale = (sum(g' x) - mean dbias) inv,
//                dx = g' a + x c1 + c0, with c1 = -a inv dscale / n, c0 = -a dbias / n - mean c1
// (murajax/models/batchnorm.py holds the same formulas in XLA). Sums run over fixed chunks of
// kChunkRows rows and the chunks' partial sums are added in order, so results do not depend on
// the number of threads. A NaN stays NaN through the ReLU, as XLA's maximum keeps it.

#ifndef MURAJAX_OPS_BATCHNORM_RELU_H_
#define MURAJAX_OPS_BATCHNORM_RELU_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace bnrelu {

constexpr int64_t kChunkRows = 64;

#define MURAJAX_BN_INLINE inline __attribute__((always_inline))

// Where the prefix lives: `rows` rows of `stride` elements, the first `channels` of each used.
struct Prefix {
  int64_t rows;
  int64_t stride;
  int64_t channels;
};

MURAJAX_BN_INLINE float Widen(float v) { return v; }
MURAJAX_BN_INLINE float Widen(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

MURAJAX_BN_INLINE void Store(float* p, float v) { *p = v; }
// float32 -> bfloat16 rounding to nearest even, as XLA converts; a NaN stays a (quiet) NaN.
MURAJAX_BN_INLINE void Store(uint16_t* p, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  *p = static_cast<uint16_t>(nan ? ((bits >> 16) | 0x40u) : rounded);
}

// max(z, 0) keeping NaN (XLA's maximum), +0 for negative z and -0.
MURAJAX_BN_INLINE float Relu(float z) {
  const float positive = z > 0.f ? z : 0.f;
  return z != z ? z : positive;
}

// g where z > 0, else 0 (the ReLU's gradient; g is loaded either way so that loops vectorise).
MURAJAX_BN_INLINE float Masked(float g, float z) { return z > 0.f ? g : 0.f; }

// Sums of x and x^2 per channel over `count` rows starting at `x`.
template <typename T>
MURAJAX_BN_INLINE void StatsChunk(const T* x, int64_t stride, int64_t count, int64_t channels,
                                  float* sum, float* sum_sq) {
  for (int64_t c = 0; c < channels; ++c) sum[c] = sum_sq[c] = 0.f;
  for (int64_t r = 0; r < count; ++r) {
    const T* row = x + r * stride;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float v = Widen(row[c]);
      sum[c] += v;
      sum_sq[c] += v * v;
    }
  }
}

// y = max((x - mean) * a + bias, 0) for `count` rows; y is dense (`channels` per row).
template <typename T>
MURAJAX_BN_INLINE void ApplyChunk(const T* x, int64_t stride, int64_t count, int64_t channels,
                                  const float* mean, const float* a, const float* bias, T* y) {
  for (int64_t r = 0; r < count; ++r) {
    const T* row = x + r * stride;
    T* out = y + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      Store(out + c, Relu((Widen(row[c]) - mean[c]) * a[c] + bias[c]));
    }
  }
}

// Sums of g' and g' x per channel, g' = g where z > 0 (else 0); g is dense.
template <typename T>
MURAJAX_BN_INLINE void GradSumsChunk(const T* x, int64_t stride, const T* g, int64_t count,
                                     int64_t channels, const float* mean, const float* a,
                                     const float* bias, float* sum_g, float* sum_gx) {
  for (int64_t c = 0; c < channels; ++c) sum_g[c] = sum_gx[c] = 0.f;
  for (int64_t r = 0; r < count; ++r) {
    const T* row = x + r * stride;
    const T* grow = g + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float v = Widen(row[c]);
      const float gm = Masked(Widen(grow[c]), (v - mean[c]) * a[c] + bias[c]);
      sum_g[c] += gm;
      sum_gx[c] += gm * v;
    }
  }
}

// dx = g' a + (x c1 + c0), written (or, with `accumulate`, added) in T to `out` rows of
// `out_stride` elements.
template <typename T>
MURAJAX_BN_INLINE void InputGradChunk(const T* x, int64_t stride, const T* g, int64_t count,
                                      int64_t channels, const float* mean, const float* a,
                                      const float* bias, const float* c1, const float* c0,
                                      T* out, int64_t out_stride, bool accumulate) {
  for (int64_t r = 0; r < count; ++r) {
    const T* row = x + r * stride;
    const T* grow = g + r * channels;
    T* orow = out + r * out_stride;
    if (accumulate) {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const float v = Widen(row[c]);
        const float gm = Masked(Widen(grow[c]), (v - mean[c]) * a[c] + bias[c]);
        T dx;
        Store(&dx, gm * a[c] + (v * c1[c] + c0[c]));
        Store(orow + c, Widen(orow[c]) + Widen(dx));
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const float v = Widen(row[c]);
        const float gm = Masked(Widen(grow[c]), (v - mean[c]) * a[c] + bias[c]);
        Store(orow + c, gm * a[c] + (v * c1[c] + c0[c]));
      }
    }
  }
}

// The instruction sets the chunk kernels are built for; `Use` picks one for the whole library.
// murajax/ops/onednn_conv.cc picks oneDNN's (the CPU's, or less under ONEDNN_MAX_CPU_ISA), so
// that every level can be tested on a machine that has the highest.
enum class Level { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline Level& CurrentLevel() {
  static Level level = Level::kBaseline;
  return level;
}
inline void Use(Level level) { CurrentLevel() = level; }

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MURAJAX_BN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define MURAJAX_BN_AVX2 __attribute__((target("avx2,fma")))
#else
#define MURAJAX_BN_AVX512
#define MURAJAX_BN_AVX2
#endif

// The four chunk kernels for one element type, built once per level as `Stats<T><suffix>`...
#define MURAJAX_BN_KERNELS_AT(TARGET, T, Suffix)                                               \
  TARGET inline void Stats##Suffix(const T* x, int64_t stride, int64_t count, int64_t channels, \
                                   float* sum, float* sum_sq) {                                \
    StatsChunk(x, stride, count, channels, sum, sum_sq);                                      \
  }                                                                                           \
  TARGET inline void Apply##Suffix(const T* x, int64_t stride, int64_t count, int64_t channels, \
                                   const float* mean, const float* a, const float* bias, T* y) { \
    ApplyChunk(x, stride, count, channels, mean, a, bias, y);                                 \
  }                                                                                           \
  TARGET inline void GradSums##Suffix(const T* x, int64_t stride, const T* g, int64_t count,   \
                                      int64_t channels, const float* mean, const float* a,     \
                                      const float* bias, float* sum_g, float* sum_gx) {        \
    GradSumsChunk(x, stride, g, count, channels, mean, a, bias, sum_g, sum_gx);               \
  }                                                                                           \
  TARGET inline void InputGrad##Suffix(const T* x, int64_t stride, const T* g, int64_t count,  \
                                       int64_t channels, const float* mean, const float* a,    \
                                       const float* bias, const float* c1, const float* c0,    \
                                       T* out, int64_t out_stride, bool accumulate) {          \
    InputGradChunk(x, stride, g, count, channels, mean, a, bias, c1, c0, out, out_stride,     \
                   accumulate);                                                                \
  }

MURAJAX_BN_KERNELS_AT(MURAJAX_BN_AVX512, float, F32Avx512)
MURAJAX_BN_KERNELS_AT(MURAJAX_BN_AVX2, float, F32Avx2)
MURAJAX_BN_KERNELS_AT(, float, F32Baseline)
MURAJAX_BN_KERNELS_AT(MURAJAX_BN_AVX512, uint16_t, Bf16Avx512)
MURAJAX_BN_KERNELS_AT(MURAJAX_BN_AVX2, uint16_t, Bf16Avx2)
MURAJAX_BN_KERNELS_AT(, uint16_t, Bf16Baseline)
#undef MURAJAX_BN_KERNELS_AT

// ...and called through `Stats`, `Apply`, `GradSums` and `InputGrad` at the current level.
#define MURAJAX_BN_DISPATCH(Name, T, Type, params, args)  \
  inline void Name params {                                \
    switch (CurrentLevel()) {                              \
      case Level::kAvx512:                                 \
        return Name##Type##Avx512 args;                    \
      case Level::kAvx2:                                   \
        return Name##Type##Avx2 args;                      \
      default:                                             \
        return Name##Type##Baseline args;                  \
    }                                                      \
  }

#define MURAJAX_BN_DISPATCH_ALL(T, Type)                                                        \
  MURAJAX_BN_DISPATCH(Stats, T, Type,                                                          \
                      (const T* x, int64_t s, int64_t n, int64_t c, float* a, float* b),       \
                      (x, s, n, c, a, b))                                                      \
  MURAJAX_BN_DISPATCH(Apply, T, Type,                                                          \
                      (const T* x, int64_t s, int64_t n, int64_t c, const float* m,            \
                       const float* a, const float* b, T* y),                                  \
                      (x, s, n, c, m, a, b, y))                                                \
  MURAJAX_BN_DISPATCH(GradSums, T, Type,                                                       \
                      (const T* x, int64_t s, const T* g, int64_t n, int64_t c, const float* m, \
                       const float* a, const float* b, float* sg, float* sgx),                 \
                      (x, s, g, n, c, m, a, b, sg, sgx))                                       \
  MURAJAX_BN_DISPATCH(InputGrad, T, Type,                                                      \
                      (const T* x, int64_t s, const T* g, int64_t n, int64_t c, const float* m, \
                       const float* a, const float* b, const float* c1, const float* c0,       \
                       T* out, int64_t os, bool acc),                                          \
                      (x, s, g, n, c, m, a, b, c1, c0, out, os, acc))

MURAJAX_BN_DISPATCH_ALL(float, F32)
MURAJAX_BN_DISPATCH_ALL(uint16_t, Bf16)
#undef MURAJAX_BN_DISPATCH_ALL
#undef MURAJAX_BN_DISPATCH

inline int64_t Chunks(int64_t rows) { return (rows + kChunkRows - 1) / kChunkRows; }

// body(k, first, count) for each chunk k of `rows` rows (rows first .. first + count - 1), the
// chunks shared out over the OpenMP threads.
template <typename Body>
void ForEachChunk(int64_t rows, Body body) {
  const int64_t chunks = Chunks(rows);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; ++k) {
    const int64_t first = k * kChunkRows;
    body(k, first, std::min(kChunkRows, rows - first));
  }
}

// Per-channel totals of two chunked partial sums ([chunk][channel] each), in chunk order.
inline void AddChunks(const float* first, const float* second, int64_t chunks, int64_t channels,
                      float* first_total, float* second_total) {
  std::fill(first_total, first_total + channels, 0.f);
  std::fill(second_total, second_total + channels, 0.f);
  for (int64_t k = 0; k < chunks; ++k) {
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      first_total[c] += first[k * channels + c];
      second_total[c] += second[k * channels + c];
    }
  }
}

// inv = 1 / sqrt(var + eps) and a = scale * inv per channel.
inline void Coefficients(const float* scale, const float* var, float epsilon, int64_t channels,
                         float* inv, float* a) {
  for (int64_t c = 0; c < channels; ++c) {
    inv[c] = 1.f / std::sqrt(var[c] + epsilon);
    a[c] = scale[c] * inv[c];
  }
}

// y = relu(bn(x)) with the given statistics (dense). `work` holds 2 * channels floats.
template <typename T>
void Normalize(const T* x, const Prefix& p, const float* scale, const float* bias,
               const float* mean, const float* var, float epsilon, T* y, float* work) {
  const int64_t channels = p.channels;
  float* inv = work;
  float* a = work + channels;
  Coefficients(scale, var, epsilon, channels, inv, a);
  ForEachChunk(p.rows, [&](int64_t, int64_t first, int64_t count) {
    Apply(x + first * p.stride, p.stride, count, channels, mean, a, bias, y + first * channels);
  });
}

// Forward: the batch's mean and (biased) variance of the prefix of `x`, and y = relu(bn(x))
// (dense). `work` holds at least 2 * Chunks(rows) * channels floats.
template <typename T>
void Forward(const T* x, const Prefix& p, const float* scale, const float* bias, float epsilon,
             T* y, float* mean, float* var, float* work) {
  const int64_t chunks = Chunks(p.rows), channels = p.channels;
  float* sums = work;
  float* squares = work + chunks * channels;
  ForEachChunk(p.rows, [&](int64_t k, int64_t first, int64_t count) {
    Stats(x + first * p.stride, p.stride, count, channels, sums + k * channels,
          squares + k * channels);
  });
  AddChunks(sums, squares, chunks, channels, mean, var);
  const float n = static_cast<float>(p.rows);
  for (int64_t c = 0; c < channels; ++c) {
    mean[c] = mean[c] / n;
    var[c] = std::max(var[c] / n - mean[c] * mean[c], 0.f);
  }
  Normalize(x, p, scale, bias, mean, var, epsilon, y, work);  // the partial sums are spent
}

// Backward: (dx, dscale, dbias) of y = relu(bn(x)) for y's gradient `g` (dense), with the
// forward pass's batch statistics. dx goes to the first `channels` of each row of `out` (rows
// of `out_stride`), written, or added to what is there with `accumulate`. `work` holds at least
// 2 * Chunks(rows) * channels + 6 * channels floats.
template <typename T>
void Backward(const T* x, const Prefix& p, const T* g, const float* scale, const float* bias,
              const float* mean, const float* var, float epsilon, T* out, int64_t out_stride,
              bool accumulate, float* dscale, float* dbias, float* work) {
  const int64_t chunks = Chunks(p.rows), channels = p.channels;
  float* sums_g = work;
  float* sums_gx = work + chunks * channels;
  float* inv = sums_gx + chunks * channels;
  float* a = inv + channels;
  float* c1 = a + channels;
  float* c0 = c1 + channels;
  float* sum_gx = c0 + channels;
  Coefficients(scale, var, epsilon, channels, inv, a);
  ForEachChunk(p.rows, [&](int64_t k, int64_t first, int64_t count) {
    GradSums(x + first * p.stride, p.stride, g + first * channels, count, channels, mean, a,
             bias, sums_g + k * channels, sums_gx + k * channels);
  });
  AddChunks(sums_g, sums_gx, chunks, channels, dbias, sum_gx);
  const float n = static_cast<float>(p.rows);
  for (int64_t c = 0; c < channels; ++c) {
    dscale[c] = (sum_gx[c] - mean[c] * dbias[c]) * inv[c];
    c1[c] = -a[c] * inv[c] * dscale[c] / n;
    c0[c] = -a[c] * dbias[c] / n - mean[c] * c1[c];
  }
  ForEachChunk(p.rows, [&](int64_t, int64_t first, int64_t count) {
    InputGrad(x + first * p.stride, p.stride, g + first * channels, count, channels, mean, a,
              bias, c1, c0, out + first * out_stride, out_stride, accumulate);
  });
}

// Floats of work space that Forward, Normalize and Backward need for `p`.
inline int64_t WorkFloats(const Prefix& p) { return 2 * Chunks(p.rows) * p.channels + 6 * p.channels; }

}  // namespace bnrelu

#endif  // MURAJAX_OPS_BATCHNORM_RELU_H_
