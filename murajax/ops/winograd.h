// Winograd F(2x2, 3x3) transforms for float32 NHWC x HWIO convolutions with stride 1 and
// padding 1 on images of even height and width (included by onednn_conv.cc).
//
// A 3x3 convolution's 2x2 output tile is Y = A^T [(G g G^T) . (B^T d B)] A, where d is the 4x4
// input patch around it and "." is elementwise: 16 products instead of 36 multiply-adds, so
// each of the three passes of a training step becomes 16 matrix products (oneDNN matmul), one
// per element e of the 4x4 tile, between transformed arrays laid out as [e][tile][channel]:
//   forward         M[e] (T x O) = V[e] (T x C) @ U[e] (C x O),  Y = output transform of M
//   input gradient  the forward pass of dy with the kernel turned 180 degrees and transposed
//   kernel gradient S[e] (C x O) = V[e]^T (C x T) @ Z[e] (T x O),  Z = A dY A^T per tile,
//                   dW = G^T S G
// (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). The transforms'
// coefficients are 0, +-1 and +-1/2, so the results differ from a direct convolution's only by
// float32 rounding. Tiles are numbered t = (n * H/2 + tile row) * W/2 + tile column.

#ifndef MURAJAX_OPS_WINOGRAD_H_
#define MURAJAX_OPS_WINOGRAD_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#else  // built without an OpenMP runtime (Clang, see murajax/ops/onednn.py): one thread
inline int omp_get_max_threads() { return 1; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_thread_num() { return 0; }
#endif

namespace winograd {

constexpr int kElements = 16;  // a 4x4 transformed tile

// Vector code for the machine it runs on: GCC (and Clang 14 or newer) builds each transform for
// AVX-512, AVX2 and the x86-64 baseline and picks one when the library loads.
#if defined(__x86_64__) && ((defined(__GNUC__) && !defined(__clang__)) || \
                             (defined(__clang__) && __clang_major__ >= 14))
#define MURAJAX_WINOGRAD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MURAJAX_WINOGRAD_CLONES
#endif

// U[e][c][o] = (G g G^T)[e] of the HWIO kernel `hwio` (3, 3, C, O). With `turned`, the kernel
// is first turned 180 degrees and its channels swapped (the input gradient's kernel), so U is
// [e][o][c].
MURAJAX_WINOGRAD_CLONES
inline void TransformKernel(const float* hwio, float* u, int64_t c_size, int64_t o_size,
                            bool turned) {
  const int64_t co = c_size * o_size;
#pragma omp parallel for
  for (int64_t c = 0; c < c_size; ++c) {
    for (int64_t o = 0; o < o_size; ++o) {
      float g[3][3];
      for (int kh = 0; kh < 3; ++kh) {
        for (int kw = 0; kw < 3; ++kw) {
          int h = turned ? 2 - kh : kh, w = turned ? 2 - kw : kw;
          g[kh][kw] = hwio[(h * 3 + w) * co + c * o_size + o];
        }
      }
      float rows[4][3];  // G g
      for (int kw = 0; kw < 3; ++kw) {
        rows[0][kw] = g[0][kw];
        rows[1][kw] = 0.5f * (g[0][kw] + g[1][kw] + g[2][kw]);
        rows[2][kw] = 0.5f * (g[0][kw] - g[1][kw] + g[2][kw]);
        rows[3][kw] = g[2][kw];
      }
      const int64_t at = turned ? o * c_size + c : c * o_size + o;
      for (int i = 0; i < 4; ++i) {
        const float a = rows[i][0], b = rows[i][1], d = rows[i][2];
        u[(i * 4 + 0) * co + at] = a;
        u[(i * 4 + 1) * co + at] = 0.5f * (a + b + d);
        u[(i * 4 + 2) * co + at] = 0.5f * (a - b + d);
        u[(i * 4 + 3) * co + at] = d;
      }
    }
  }
}

// V[e][t][c] = (B^T d B)[e] of each tile's 4x4 input patch d of NHWC `x` (zero outside it).
MURAJAX_WINOGRAD_CLONES
inline void TransformInput(const float* x, float* v, int64_t n_size, int64_t h_size,
                           int64_t w_size, int64_t c_size) {
  const int64_t rows = h_size / 2, cols = w_size / 2;
  const int64_t plane = n_size * rows * cols * c_size;
  const std::vector<float> zeros(c_size, 0.f);
#pragma omp parallel for collapse(2)
  for (int64_t n = 0; n < n_size; ++n) {
    for (int64_t ty = 0; ty < rows; ++ty) {
      for (int64_t tx = 0; tx < cols; ++tx) {
        const float* p[16];
        for (int i = 0; i < 4; ++i) {
          for (int j = 0; j < 4; ++j) {
            int64_t y = 2 * ty - 1 + i, xx = 2 * tx - 1 + j;
            bool inside = y >= 0 && y < h_size && xx >= 0 && xx < w_size;
            p[i * 4 + j] = inside ? x + ((n * h_size + y) * w_size + xx) * c_size : zeros.data();
          }
        }
        float* q[16];
        const int64_t t = (n * rows + ty) * cols + tx;
        for (int e = 0; e < kElements; ++e) q[e] = v + e * plane + t * c_size;
#pragma omp simd
        for (int64_t c = 0; c < c_size; ++c) {
          float b[4][4];  // B^T d
          for (int j = 0; j < 4; ++j) {
            const float d0 = p[j][c], d1 = p[4 + j][c], d2 = p[8 + j][c], d3 = p[12 + j][c];
            b[0][j] = d0 - d2;
            b[1][j] = d1 + d2;
            b[2][j] = d2 - d1;
            b[3][j] = d1 - d3;
          }
          for (int i = 0; i < 4; ++i) {
            q[i * 4 + 0][c] = b[i][0] - b[i][2];
            q[i * 4 + 1][c] = b[i][1] + b[i][2];
            q[i * 4 + 2][c] = b[i][2] - b[i][1];
            q[i * 4 + 3][c] = b[i][1] - b[i][3];
          }
        }
      }
    }
  }
}

// NHWC `y` = A^T m A of each tile's M[e][t][o] (+ `bias`, then ReLU when `relu`).
MURAJAX_WINOGRAD_CLONES
inline void TransformOutput(const float* m, const float* bias, bool relu, float* y,
                            int64_t n_size, int64_t h_size, int64_t w_size, int64_t o_size) {
  const int64_t rows = h_size / 2, cols = w_size / 2;
  const int64_t plane = n_size * rows * cols * o_size;
  const std::vector<float> zeros(o_size, 0.f);
  const float* b = bias ? bias : zeros.data();
  // max(value, floor) keeps a NaN value (std::max returns its first argument unless the second
  // is larger), as XLA's ReLU does.
  const float floor = relu ? 0.f : -__builtin_inff();
#pragma omp parallel for collapse(2)
  for (int64_t n = 0; n < n_size; ++n) {
    for (int64_t ty = 0; ty < rows; ++ty) {
      for (int64_t tx = 0; tx < cols; ++tx) {
        const int64_t t = (n * rows + ty) * cols + tx;
        const float* p[16];
        for (int e = 0; e < kElements; ++e) p[e] = m + e * plane + t * o_size;
        float* y00 = y + ((n * h_size + 2 * ty) * w_size + 2 * tx) * o_size;
        float* y01 = y00 + o_size;
        float* y10 = y00 + w_size * o_size;
        float* y11 = y10 + o_size;
#pragma omp simd
        for (int64_t o = 0; o < o_size; ++o) {
          float top[4], bottom[4];  // A^T m
          for (int j = 0; j < 4; ++j) {
            top[j] = p[j][o] + p[4 + j][o] + p[8 + j][o];
            bottom[j] = p[4 + j][o] - p[8 + j][o] - p[12 + j][o];
          }
          y00[o] = std::max(top[0] + top[1] + top[2] + b[o], floor);
          y01[o] = std::max(top[1] - top[2] - top[3] + b[o], floor);
          y10[o] = std::max(bottom[0] + bottom[1] + bottom[2] + b[o], floor);
          y11[o] = std::max(bottom[1] - bottom[2] - bottom[3] + b[o], floor);
        }
      }
    }
  }
}

// Z[e][t][o] = (A dY A^T)[e] of each tile's 2x2 output gradient dY (NHWC `dy`).
MURAJAX_WINOGRAD_CLONES
inline void TransformOutputGradient(const float* dy, float* z, int64_t n_size, int64_t h_size,
                                    int64_t w_size, int64_t o_size) {
  const int64_t rows = h_size / 2, cols = w_size / 2;
  const int64_t plane = n_size * rows * cols * o_size;
#pragma omp parallel for collapse(2)
  for (int64_t n = 0; n < n_size; ++n) {
    for (int64_t ty = 0; ty < rows; ++ty) {
      for (int64_t tx = 0; tx < cols; ++tx) {
        const int64_t t = (n * rows + ty) * cols + tx;
        const float* g00 = dy + ((n * h_size + 2 * ty) * w_size + 2 * tx) * o_size;
        const float* g01 = g00 + o_size;
        const float* g10 = g00 + w_size * o_size;
        const float* g11 = g10 + o_size;
        float* q[16];
        for (int e = 0; e < kElements; ++e) q[e] = z + e * plane + t * o_size;
#pragma omp simd
        for (int64_t o = 0; o < o_size; ++o) {
          // A (p, q) = (p, p + q, p - q, -q), along rows and then along columns.
          const float r[4][2] = {{g00[o], g01[o]},
                                 {g00[o] + g10[o], g01[o] + g11[o]},
                                 {g00[o] - g10[o], g01[o] - g11[o]},
                                 {-g10[o], -g11[o]}};
          for (int i = 0; i < 4; ++i) {
            q[i * 4 + 0][o] = r[i][0];
            q[i * 4 + 1][o] = r[i][0] + r[i][1];
            q[i * 4 + 2][o] = r[i][0] - r[i][1];
            q[i * 4 + 3][o] = -r[i][1];
          }
        }
      }
    }
  }
}

// The HWIO kernel gradient dW = G^T s G of S[e][c][o].
MURAJAX_WINOGRAD_CLONES
inline void TransformKernelGradient(const float* s, float* hwio, int64_t c_size,
                                    int64_t o_size) {
  const int64_t co = c_size * o_size;
#pragma omp parallel for
  for (int64_t c = 0; c < c_size; ++c) {
#pragma omp simd
    for (int64_t o = 0; o < o_size; ++o) {
      const int64_t at = c * o_size + o;
      float rows[3][4];  // G^T s: (u0 + u1/2 + u2/2, u1/2 - u2/2, u1/2 + u2/2 + u3)
      for (int j = 0; j < 4; ++j) {
        const float u0 = s[(0 * 4 + j) * co + at], u1 = s[(1 * 4 + j) * co + at];
        const float u2 = s[(2 * 4 + j) * co + at], u3 = s[(3 * 4 + j) * co + at];
        rows[0][j] = u0 + 0.5f * (u1 + u2);
        rows[1][j] = 0.5f * (u1 - u2);
        rows[2][j] = 0.5f * (u1 + u2) + u3;
      }
      for (int i = 0; i < 3; ++i) {
        const float u0 = rows[i][0], u1 = rows[i][1], u2 = rows[i][2], u3 = rows[i][3];
        hwio[(i * 3 + 0) * co + at] = u0 + 0.5f * (u1 + u2);
        hwio[(i * 3 + 1) * co + at] = 0.5f * (u1 - u2);
        hwio[(i * 3 + 2) * co + at] = 0.5f * (u1 + u2) + u3;
      }
    }
  }
}

// sum += addend, elementwise.
MURAJAX_WINOGRAD_CLONES
inline void Add(const float* addend, float* sum, int64_t count) {
#pragma omp parallel for simd
  for (int64_t i = 0; i < count; ++i) sum[i] += addend[i];
}

// The bias gradient: the sum of the NHWC gradient `dy` (`pixels` x O) over its pixels, in the
// same order on every call (each thread sums a fixed share; the shares are added in order).
MURAJAX_WINOGRAD_CLONES
inline void SumPixels(const float* dy, float* sum, int64_t pixels, int64_t o_size) {
  // Allocated before the parallel region: an exception must not leave an OpenMP region.
  const int threads = std::max(1, omp_get_max_threads());
  std::vector<float> partials(static_cast<size_t>(threads) * o_size, 0.f);
  int used = 1;
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    used = omp_get_num_threads();
    float* partial = partials.data() + static_cast<size_t>(omp_get_thread_num()) * o_size;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pixels; ++p) {
#pragma omp simd
      for (int64_t o = 0; o < o_size; ++o) partial[o] += dy[p * o_size + o];
    }
  }
  std::fill(sum, sum + o_size, 0.f);
  for (int t = 0; t < used; ++t) {
    for (int64_t o = 0; o < o_size; ++o) sum[o] += partials[static_cast<size_t>(t) * o_size + o];
  }
}

}  // namespace winograd

#endif  // MURAJAX_OPS_WINOGRAD_H_
