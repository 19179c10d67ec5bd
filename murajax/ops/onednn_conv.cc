// oneDNN 2-D convolutions for XLA:CPU, as typed XLA FFI handlers (see murajax/ops/conv.py).
//
// Three handlers, the three passes of a convolution's training step, on row-major buffers:
//   murajax_onednn_conv_fwd          x (N,H,W,C), w (KH,KW,C,O), b (O)  -> y (N,OH,OW,O)
//                                    optional bias and a fused ReLU (oneDNN post-op)
//   murajax_onednn_conv_bwd_data     dy (N,OH,OW,O), w (KH,KW,C,O)     -> dx (N,H,W,C)
//   murajax_onednn_conv_bwd_weights  x (N,H,W,C), dy (N,OH,OW,O)       -> dw (KH,KW,C,O), db (O)
// and two for a convolution + ReLU followed by 2x2 max-pooling (stride 2):
//   murajax_onednn_conv_relu_pool_fwd  x, w, b -> pooled (N,OH/2,OW/2,O), winner (same, uint8)
//                                      the full-size output lives only in a shared buffer
//   murajax_onednn_unpool_relu_bwd     pooled, g (its gradient), winner -> dy (N,OH,OW,O)
// in float32 or bfloat16 (every buffer of one call has the same type). Attributes: strides,
// explicit padding (top, bottom, left, right), and `winograd`: whether a float32 3x3
// convolution that `UseWinograd` describes may run as Winograd F(2x2, 3x3) (winograd.h) instead
// of oneDNN's direct convolution. Primitives are built once per shape and kept. One call runs
// at a time (each uses every core), so the handlers share one set of buffers.
//
// Every handler checks that its buffers' shapes and dtypes fit together before it touches them
// (murajax/ops/conv.py checks the same in Python first), and refuses empty arrays (conv.py gives
// those to XLA). NaN and infinity come out where XLA's convolution, ReLU and pooling put them
// (`RunLocked`). Failures, an allocation included, are XLA FFI errors, never exceptions through
// XLA, and leave the buffers usable.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "batchnorm_relu.h"
#include "winograd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using tag = dnnl::memory::format_tag;

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

dnnl::stream& ThreadStream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Buffers, grown as needed and shared by all threads: every use holds `RunningLock` (one
// primitive runs at a time), so each exists once, not once per XLA thread. kScratchpad is the
// primitives' scratchpad (a user scratchpad), kBlockedWeights the weights in the blocked layout
// a primitive prefers, kConvOutput a convolution's output before it is pooled, kMaskedGradient a
// pooled gradient after the ReLU's mask, and the kWinograd* ones the Winograd passes'
// transformed kernel, inputs and products, kBatchNormWork the BatchNorm kernels' partial sums.
enum Slot {
  kScratchpad = 0,
  kBlockedWeights,
  kConvOutput,
  kMaskedGradient,
  kWinogradKernel,
  kWinogradInput,
  kWinogradProduct,
  kBatchNormWork,
  kSlots
};

// Page-aligned, as oneDNN's own buffers are: its AMX kernels' tile loads and stores from a
// buffer with malloc's 16-byte alignment ran bfloat16 convolutions at half speed.
struct AlignedBuffer {
  std::unique_ptr<void, decltype(&std::free)> data{nullptr, &std::free};
  size_t size = 0;
};

// The most bytes one buffer may hold: `$MURAJAX_ONEDNN_BUFFER_LIMIT` (read once), else no limit.
// A larger request fails as an allocation failure does ("out of host memory").
size_t BufferLimit() {
  static const size_t limit = [] {
    const char* text = std::getenv("MURAJAX_ONEDNN_BUFFER_LIMIT");
    if (text == nullptr || *text == '\0') return SIZE_MAX;
    char* end = nullptr;
    unsigned long long value = std::strtoull(text, &end, 10);
    return (end != nullptr && *end == '\0') ? static_cast<size_t>(value) : SIZE_MAX;
  }();
  return limit;
}

// Grows `buffer` to at least `bytes`. On failure it throws std::bad_alloc and leaves the buffer
// as it was (its old memory and size), so the next, smaller call still works.
void* Grow(AlignedBuffer& buffer, size_t bytes) {
  constexpr size_t kAlignment = 4096;
  if (buffer.size < bytes) {
    if (bytes > BufferLimit() || bytes > SIZE_MAX - kAlignment) throw std::bad_alloc();
    size_t size = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    void* data = std::aligned_alloc(kAlignment, size);
    if (data == nullptr) throw std::bad_alloc();
    buffer.data.reset(data);
    buffer.size = size;
  }
  return buffer.data.get();
}

// Only while holding `RunningLock()`.
void* Buffer(Slot slot, size_t bytes) {
  static AlignedBuffer buffers[kSlots];
  return Grow(buffers[slot], bytes);
}

float* FloatBuffer(Slot slot, int64_t floats) {
  return static_cast<float*>(Buffer(slot, static_cast<size_t>(floats) * sizeof(float)));
}

void AddScratchpad(std::unordered_map<int, memory>& args, const memory::desc& scratchpad) {
  if (scratchpad.get_size() > 0) {
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 memory(scratchpad, Engine(), Buffer(kScratchpad, scratchpad.get_size())));
  }
}

enum class Pass { kForward, kBackwardData, kBackwardWeights };

struct Geometry {
  memory::dims src, wei, dst, bias, strides, pad_l, pad_r;
  memory::data_type type;
  bool has_bias;
  bool relu;
  bool winograd = false;  // whether `UseWinograd` may replace the direct convolution

  std::string Key(Pass pass) const {
    std::string key = std::to_string(static_cast<int>(pass)) + "|" +
                      std::to_string(static_cast<int>(type)) + "|" +
                      std::to_string(has_bias) + std::to_string(relu);
    for (const auto* dims : {&src, &wei, &dst, &strides, &pad_l, &pad_r}) {
      key += "|";
      for (auto d : *dims) key += std::to_string(d) + ",";
    }
    return key;
  }
};

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (g.relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  auto src = memory::desc(g.src, g.type, tag::nhwc);
  auto wei = memory::desc(g.wei, g.type, tag::any);
  auto dst = memory::desc(g.dst, g.type, tag::nhwc);
  if (g.has_bias) {
    auto bias = memory::desc(g.bias, g.type, tag::a);
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wei,
        bias, dst, g.strides, g.pad_l, g.pad_r, attr);
  }
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wei,
      dst, g.strides, g.pad_l, g.pad_r, attr);
}

// A primitive, its scratchpad, and the weights layout it runs on: XLA's HWIO buffers are
// reordered into it (forward, input gradient) or out of it (kernel gradient) when they differ.
struct Cached {
  dnnl::primitive primitive;
  memory::desc scratchpad;
  memory::desc weights;
  bool reorder_weights;
  dnnl::reorder reorder;
};

template <typename PrimitiveDesc>
Cached Finish(dnnl::primitive primitive, const PrimitiveDesc& pd, const memory::desc& weights,
              const Geometry& g, bool into_user_layout) {
  auto user = memory::desc(g.wei, g.type, tag::hwio);
  Cached cached{primitive, pd.scratchpad_desc(), weights, weights != user, dnnl::reorder()};
  if (cached.reorder_weights) {
    cached.reorder = into_user_layout ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                            Engine(), weights, Engine(), user))
                                      : dnnl::reorder(dnnl::reorder::primitive_desc(
                                            Engine(), user, Engine(), weights));
  }
  return cached;
}

Cached Build(const Geometry& g, Pass pass) {
  auto src = memory::desc(g.src, g.type, tag::nhwc);
  auto wei = memory::desc(g.wei, g.type, tag::any);
  auto dst = memory::desc(g.dst, g.type, tag::nhwc);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto forward = ForwardDesc(g);
  if (pass == Pass::kForward) {
    return Finish(dnnl::convolution_forward(forward), forward, forward.weights_desc(), g, false);
  }
  if (pass == Pass::kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, wei, dst, g.strides, g.pad_l, g.pad_r,
        forward, attr);
    return Finish(dnnl::convolution_backward_data(pd), pd, pd.weights_desc(), g, false);
  }
  if (g.has_bias) {
    auto bias = memory::desc(g.bias, g.type, tag::a);
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, wei, bias, dst, g.strides, g.pad_l,
        g.pad_r, forward, attr);
    return Finish(dnnl::convolution_backward_weights(pd), pd, pd.diff_weights_desc(), g, true);
  }
  auto pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, src, wei, dst, g.strides, g.pad_l, g.pad_r,
      forward, attr);
  return Finish(dnnl::convolution_backward_weights(pd), pd, pd.diff_weights_desc(), g, true);
}

const Cached& Lookup(const Geometry& g, Pass pass) {
  static std::mutex mutex;
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<Cached>>();
  std::string key = g.Key(pass);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) {
    it = cache->emplace(key, std::make_unique<Cached>(Build(g, pass))).first;
  }
  return *it->second;
}

// oneDNN's type of an XLA buffer type; undef for the types these handlers do not take.
memory::data_type DataType(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32:
      return memory::data_type::f32;
    case ffi::DataType::BF16:
      return memory::data_type::bf16;
    default:
      return memory::data_type::undef;
  }
}

// The convolution's output size along one axis (0 or less: no output).
int64_t OutputSize(int64_t size, int64_t kernel, int64_t stride, int64_t pad_lo, int64_t pad_hi) {
  return (size + pad_lo + pad_hi - kernel) / stride + 1;
}

std::string DimsText(ffi::AnyBuffer::Dimensions dims) {
  std::string text = "(";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + (dims.size() == 1 ? ",)" : ")");
}

bool SameDims(ffi::AnyBuffer::Dimensions a, ffi::AnyBuffer::Dimensions b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("murajax oneDNN convolution: " + what);
}

// Geometry from NHWC input dims, HWIO kernel dims and NHWC output dims (oneDNN's logical order
// is NCHW / OIHW whatever the memory layout), after checking that they fit together: these
// handlers read and write exactly the sizes the dims give, so a call that murajax/ops/conv.py
// would not make is an error here, never a read out of bounds. Empty arrays are refused (conv.py
// gives them to XLA).
ffi::Error MakeGeometry(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions w,
                        ffi::AnyBuffer::Dimensions y, ffi::DataType type, int64_t stride_h,
                        int64_t stride_w, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                        int64_t pad_right, bool has_bias, bool relu, bool winograd,
                        Geometry& g) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return Invalid("NHWC x HWIO only, got " + DimsText(x) + " x " + DimsText(w));
  }
  if (DataType(type) == memory::data_type::undef) {
    return Invalid("float32 or bfloat16 only");
  }
  if (stride_h < 1 || stride_w < 1 || pad_top < 0 || pad_bottom < 0 || pad_left < 0 ||
      pad_right < 0) {
    return Invalid("strides must be positive and padding not negative");
  }
  for (auto dims : {x, w, y}) {
    for (int64_t d : dims) {
      if (d < 1) return Invalid("empty array " + DimsText(dims) + " (XLA handles those)");
    }
  }
  int64_t out_h = OutputSize(x[1], w[0], stride_h, pad_top, pad_bottom);
  int64_t out_w = OutputSize(x[2], w[1], stride_w, pad_left, pad_right);
  if (w[2] != x[3] || y[0] != x[0] || y[1] != out_h || y[2] != out_w || y[3] != w[3]) {
    return Invalid("input " + DimsText(x) + ", kernel " + DimsText(w) + " and output " +
                   DimsText(y) + " do not fit together");
  }
  g.src = {x[0], x[3], x[1], x[2]};
  g.wei = {w[3], w[2], w[0], w[1]};
  g.dst = {y[0], y[3], y[1], y[2]};
  g.bias = {w[3]};
  g.strides = {stride_h, stride_w};
  g.pad_l = {pad_top, pad_left};
  g.pad_r = {pad_bottom, pad_right};
  g.type = DataType(type);
  g.has_bias = has_bias;
  g.relu = relu;
  g.winograd = winograd;
  return ffi::Error::Success();
}

// An error unless every buffer has `type`.
ffi::Error CheckTypes(ffi::DataType type, std::initializer_list<ffi::DataType> others) {
  for (ffi::DataType other : others) {
    if (other != type) return Invalid("every array of one call must have the same dtype");
  }
  return ffi::Error::Success();
}

// An error unless a bias given (`has_bias`) has one element per output channel of `g`.
ffi::Error CheckBias(const Geometry& g, bool has_bias, const ffi::AnyBuffer& b) {
  if (has_bias && (static_cast<int64_t>(b.element_count()) != g.wei[0] ||
                   DataType(b.element_type()) != g.type)) {
    return Invalid("bias " + DimsText(b.dimensions()) + " must be (" + std::to_string(g.wei[0]) +
                   ",) in the input's dtype");
  }
  return ffi::Error::Success();
}

int64_t Count(const memory::dims& dims) {
  int64_t count = 1;
  for (int64_t d : dims) count *= d;
  return count;
}

// The bit patterns of a float32 (`uint32_t`) or bfloat16 (`uint16_t`) value: the sign bit,
// and the exponent bits (all set: infinity, or NaN when the fraction is not 0).
template <typename Bits>
struct FloatBits {
  static constexpr int kWidth = 8 * sizeof(Bits);
  static constexpr Bits kSign = Bits{1} << (kWidth - 1);
  static constexpr Bits kExponent = static_cast<Bits>((Bits{0xff} << (kWidth - 9)));
  static constexpr Bits kQuietNan = static_cast<Bits>(kExponent | (Bits{1} << (kWidth - 10)));

  static bool IsNan(Bits bits) { return static_cast<Bits>(bits & ~kSign) > kExponent; }
};

template <typename Bits>
bool AllFiniteAs(const void* data, int64_t count) {
  const Bits* bits = static_cast<const Bits*>(data);
  constexpr Bits exponent = FloatBits<Bits>::kExponent;
  int bad = 0;
#pragma omp parallel for simd reduction(| : bad) if (count > (int64_t{1} << 16))
  for (int64_t i = 0; i < count; ++i) bad |= (bits[i] & exponent) == exponent;
  return bad == 0;
}

// Whether all `count` float32 or bfloat16 values at `data` are finite (no NaN or infinity).
bool AllFinite(const void* data, int64_t count, memory::data_type type) {
  return type == memory::data_type::f32 ? AllFiniteAs<uint32_t>(data, count)
                                        : AllFiniteAs<uint16_t>(data, count);
}

template <typename Bits>
void ReluKeepingNanAs(void* data, int64_t count) {
  Bits* bits = static_cast<Bits*>(data);
#pragma omp parallel for simd if (count > (int64_t{1} << 16))
  for (int64_t i = 0; i < count; ++i) {
    if ((bits[i] & FloatBits<Bits>::kSign) && !FloatBits<Bits>::IsNan(bits[i])) bits[i] = 0;
  }
}

// max(y, 0) in place as XLA computes it: NaN stays NaN (oneDNN's fused ReLU makes it 0), and
// negative values (-0 and -infinity included) become +0.
void ReluKeepingNan(void* data, int64_t count, memory::data_type type) {
  if (type == memory::data_type::f32) {
    ReluKeepingNanAs<uint32_t>(data, count);
  } else {
    ReluKeepingNanAs<uint16_t>(data, count);
  }
}

template <typename Bits>
void MarkNanWindowsAs(const void* full_data, void* pooled_data, const memory::dims& src) {
  const Bits* full = static_cast<const Bits*>(full_data);
  Bits* pooled = static_cast<Bits*>(pooled_data);
  const int64_t n = src[0], c = src[1], h = src[2], w = src[3], ph = h / 2, pw = w / 2;
#pragma omp parallel for collapse(2)
  for (int64_t image = 0; image < n; ++image) {
    for (int64_t row = 0; row < ph; ++row) {
      for (int64_t col = 0; col < pw; ++col) {
        for (int64_t channel = 0; channel < c; ++channel) {
          bool nan = false;
          for (int64_t dy = 0; dy < 2; ++dy) {
            for (int64_t dx = 0; dx < 2; ++dx) {
              nan |= FloatBits<Bits>::IsNan(
                  full[((image * h + 2 * row + dy) * w + 2 * col + dx) * c + channel]);
            }
          }
          if (nan) {
            pooled[((image * ph + row) * pw + col) * c + channel] = FloatBits<Bits>::kQuietNan;
          }
        }
      }
    }
  }
}

// Sets to NaN each pooled value of the NHWC `pooled` (n, h / 2, w / 2, c) whose 2x2 window of
// the NHWC `full` (n, h, w, c) holds a NaN: XLA's max propagates NaN, oneDNN's pooling skips it.
// (The window's winner no longer matters: the ReLU's gradient is 0 where the maximum is NaN.)
void MarkNanWindows(const void* full, void* pooled, const memory::dims& src,
                    memory::data_type type) {
  if (type == memory::data_type::f32) {
    MarkNanWindowsAs<uint32_t>(full, pooled, src);
  } else {
    MarkNanWindowsAs<uint16_t>(full, pooled, src);
  }
}

// One primitive at a time: each already uses every core, and XLA may call two independent
// convolutions (a layer's input and kernel gradients) at once, which would oversubscribe them.
std::mutex& RunningLock() {
  static std::mutex running;
  return running;
}

// Winograd F(2x2, 3x3) (winograd.h) instead of oneDNN's direct convolution, where the caller
// allows it (`Geometry::winograd`): float32 3x3 kernels, stride 1, padding 1, even height and
// width, at least kWinogradChannels input and output channels. Measured on VGG16 and the
// benchmark CNN (2 cores, AVX-512): 64 channels gave the fastest steps, 32 and 128 slower ones
// (narrower layers spend more on the transforms' memory traffic than the products save).
constexpr int64_t kWinogradChannels = 64;

bool UseWinograd(const Geometry& g) {
  // Logical dims: src {N, C, H, W}, wei {O, C, KH, KW}, dst {N, O, OH, OW}.
  return g.winograd && g.type == memory::data_type::f32 && g.wei[2] == 3 && g.wei[3] == 3 &&
         g.strides == memory::dims{1, 1} && g.pad_l == memory::dims{1, 1} &&
         g.pad_r == memory::dims{1, 1} && g.src[2] % 2 == 0 && g.src[3] % 2 == 0 &&
         g.src[1] >= kWinogradChannels && g.wei[0] >= kWinogradChannels;
}

// 16 row-major matrix products at once, c[e] (m x n) = a[e] (m x k) @ b[e] (k x n), where a
// is stored as [16][k][m] when `transposed_a`.
struct CachedMatmul {
  dnnl::matmul primitive;
  memory::desc a, b, c, scratchpad;
};

const CachedMatmul& LookupMatmul(int64_t m, int64_t k, int64_t n, bool transposed_a) {
  static std::mutex mutex;
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<CachedMatmul>>();
  std::string key = std::to_string(m) + "," + std::to_string(k) + "," + std::to_string(n) + "," +
                    std::to_string(transposed_a);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) {
    const int64_t e = winograd::kElements;
    auto f32 = memory::data_type::f32;
    auto a = transposed_a ? memory::desc({e, m, k}, f32, memory::dims{m * k, 1, m})
                          : memory::desc({e, m, k}, f32, tag::abc);
    auto b = memory::desc({e, k, n}, f32, tag::abc);
    auto c = memory::desc({e, m, n}, f32, tag::abc);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto pd = dnnl::matmul::primitive_desc(Engine(), a, b, c, attr);
    auto cached = std::make_unique<CachedMatmul>(
        CachedMatmul{dnnl::matmul(pd), a, b, c, pd.scratchpad_desc()});
    it = cache->emplace(key, std::move(cached)).first;
  }
  return *it->second;
}

void RunMatmul(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n,
               bool transposed_a) {
  const CachedMatmul& mm = LookupMatmul(m, k, n, transposed_a);
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, memory(mm.a, Engine(), const_cast<float*>(a))},
      {DNNL_ARG_WEIGHTS, memory(mm.b, Engine(), const_cast<float*>(b))},
      {DNNL_ARG_DST, memory(mm.c, Engine(), c)}};
  AddScratchpad(args, mm.scratchpad);
  dnnl::stream& stream = ThreadStream();
  mm.primitive.execute(stream, args);
  stream.wait();
}

// The transformed inputs and products of at most this many bytes at once (at least one image):
// the batch is transformed and multiplied a few images at a time, in equal chunks. 32 MiB gave
// faster VGG16 steps than 8, 16, 64 or 256 (the chunk's arrays stay in the caches longer).
constexpr int64_t kWinogradChunkBytes = int64_t{32} << 20;

// One pass of a convolution that `UseWinograd`, with `Run`'s arguments; holds `RunningLock`.
void RunWinograd(const Geometry& g, Pass pass, const std::unordered_map<int, void*>& args) {
  const int64_t n = g.src[0], c = g.src[1], h = g.src[2], w = g.src[3], o = g.wei[0];
  const int64_t e = winograd::kElements, image_tiles = (h / 2) * (w / 2);
  const int64_t image_bytes = e * image_tiles * (c + o) * static_cast<int64_t>(sizeof(float));
  const int64_t most = std::max<int64_t>(1, kWinogradChunkBytes / image_bytes);
  const int64_t chunks = (n + most - 1) / most, chunk = (n + chunks - 1) / chunks;
  auto arg = [&](int key) { return static_cast<float*>(args.at(key)); };
  auto optional = [&](int key) {
    auto it = args.find(key);
    return it == args.end() ? nullptr : static_cast<float*>(it->second);
  };
  const bool input_gradient = pass == Pass::kBackwardData;
  // The forward and input-gradient passes are the same algorithm from `in_c` to `out_c`
  // channels; the kernel-gradient pass sums its products over the chunks.
  const int64_t in_c = input_gradient ? o : c, out_c = input_gradient ? c : o;
  float* u = FloatBuffer(kWinogradKernel, (pass == Pass::kBackwardWeights ? 2 : 1) * e * c * o);
  float* v = FloatBuffer(kWinogradInput, e * chunk * image_tiles * in_c);
  float* m = FloatBuffer(kWinogradProduct, e * chunk * image_tiles * out_c);
  if (pass != Pass::kBackwardWeights) {
    winograd::TransformKernel(arg(DNNL_ARG_WEIGHTS), u, c, o, input_gradient);
  }
  for (int64_t first = 0; first < n; first += chunk) {
    const int64_t images = std::min(chunk, n - first), tiles = images * image_tiles;
    const int64_t in_offset = first * h * w * in_c, out_offset = first * h * w * out_c;
    if (pass == Pass::kForward) {
      winograd::TransformInput(arg(DNNL_ARG_SRC) + in_offset, v, images, h, w, c);
      RunMatmul(v, u, m, tiles, c, o, false);
      winograd::TransformOutput(m, optional(DNNL_ARG_BIAS), g.relu,
                                arg(DNNL_ARG_DST) + out_offset, images, h, w, o);
    } else if (input_gradient) {
      winograd::TransformInput(arg(DNNL_ARG_DIFF_DST) + in_offset, v, images, h, w, o);
      RunMatmul(v, u, m, tiles, o, c, false);
      winograd::TransformOutput(m, nullptr, false, arg(DNNL_ARG_DIFF_SRC) + out_offset, images,
                                h, w, c);
    } else {
      // Here m holds the transformed output gradient; products go to u, or past it and are
      // added to it after the first chunk.
      float* product = first == 0 ? u : u + e * c * o;
      winograd::TransformInput(arg(DNNL_ARG_SRC) + in_offset, v, images, h, w, c);
      winograd::TransformOutputGradient(arg(DNNL_ARG_DIFF_DST) + out_offset, m, images, h, w,
                                        o);
      RunMatmul(v, m, product, c, tiles, o, true);
      if (first > 0) winograd::Add(product, u, e * c * o);
    }
  }
  if (pass == Pass::kBackwardWeights) {
    winograd::TransformKernelGradient(u, arg(DNNL_ARG_DIFF_WEIGHTS), c, o);
    if (float* db = optional(DNNL_ARG_DIFF_BIAS)) {
      winograd::SumPixels(arg(DNNL_ARG_DIFF_DST), db, n * h * w, o);
    }
  }
}

// oneDNN's direct convolution for one pass (throws dnnl::error or std::bad_alloc).
void RunDirect(const Geometry& g, Pass pass, const std::unordered_map<int, void*>& args) {
  const Cached& cached = Lookup(g, pass);
  std::unordered_map<int, memory> memories;
  auto src = memory::desc(g.src, g.type, tag::nhwc);
  auto wei = memory::desc(g.wei, g.type, tag::hwio);
  auto dst = memory::desc(g.dst, g.type, tag::nhwc);
  auto bias = memory::desc(g.bias, g.type, tag::a);
  memory user_weights;
  for (auto& [arg, pointer] : args) {
    const memory::desc* md = nullptr;
    switch (arg) {
      case DNNL_ARG_SRC:
      case DNNL_ARG_DIFF_SRC:
        md = &src;
        break;
      case DNNL_ARG_WEIGHTS:
      case DNNL_ARG_DIFF_WEIGHTS:
        md = &wei;
        break;
      case DNNL_ARG_DST:
      case DNNL_ARG_DIFF_DST:
        md = &dst;
        break;
      default:
        md = &bias;
    }
    bool weights = arg == DNNL_ARG_WEIGHTS || arg == DNNL_ARG_DIFF_WEIGHTS;
    if (weights && cached.reorder_weights) {
      user_weights = memory(wei, Engine(), pointer);
      void* blocked = Buffer(kBlockedWeights, cached.weights.get_size());
      memories.emplace(arg, memory(cached.weights, Engine(), blocked));
    } else {
      memories.emplace(arg, memory(*md, Engine(), pointer));
    }
  }
  size_t scratch_bytes = cached.scratchpad.get_size();
  if (scratch_bytes > 0) {
    memories.emplace(DNNL_ARG_SCRATCHPAD,
                     memory(cached.scratchpad, Engine(), Buffer(kScratchpad, scratch_bytes)));
  }
  dnnl::stream& stream = ThreadStream();
  bool into_user_layout = pass == Pass::kBackwardWeights;
  int weights_arg = into_user_layout ? DNNL_ARG_DIFF_WEIGHTS : DNNL_ARG_WEIGHTS;
  if (cached.reorder_weights && !into_user_layout) {
    cached.reorder.execute(stream, user_weights, memories.at(weights_arg));
  }
  cached.primitive.execute(stream, memories);
  if (cached.reorder_weights && into_user_layout) {
    cached.reorder.execute(stream, memories.at(weights_arg), user_weights);
  }
  stream.wait();
}

// The arrays a pass reads, and how many elements each has.
std::vector<std::pair<const void*, int64_t>> PassInputs(
    const Geometry& g, Pass pass, const std::unordered_map<int, void*>& args) {
  auto at = [&](int key) { return static_cast<const void*>(args.at(key)); };
  if (pass == Pass::kForward) {
    std::vector<std::pair<const void*, int64_t>> inputs = {
        {at(DNNL_ARG_SRC), Count(g.src)}, {at(DNNL_ARG_WEIGHTS), Count(g.wei)}};
    if (args.count(DNNL_ARG_BIAS)) inputs.emplace_back(at(DNNL_ARG_BIAS), Count(g.bias));
    return inputs;
  }
  if (pass == Pass::kBackwardData) {
    return {{at(DNNL_ARG_DIFF_DST), Count(g.dst)}, {at(DNNL_ARG_WEIGHTS), Count(g.wei)}};
  }
  return {{at(DNNL_ARG_SRC), Count(g.src)}, {at(DNNL_ARG_DIFF_DST), Count(g.dst)}};
}

bool PassInputsFinite(const Geometry& g, Pass pass, const std::unordered_map<int, void*>& args) {
  for (const auto& [data, count] : PassInputs(g, pass, args)) {
    if (!AllFinite(data, count, g.type)) return false;
  }
  return true;
}

// One pass of the convolution `g`, while holding `RunningLock`. Winograd and the fused ReLU are
// exact for finite inputs only: Winograd's transforms subtract inputs (infinity - infinity is
// NaN where XLA's sum is infinite) and spread a non-finite value over its 4x4 tile, and oneDNN's
// ReLU turns NaN into 0. Where a pass's inputs hold NaN or infinity (checked only when it would
// use either), it runs oneDNN's direct convolution and XLA's ReLU instead, so that non-finite
// values come out exactly where XLA puts them. `inputs_finite`, when given, says which it was.
ffi::Error RunLocked(const Geometry& g, Pass pass, const std::unordered_map<int, void*>& args,
                     bool* inputs_finite = nullptr) {
  try {
    const bool winograd = UseWinograd(g), fused_relu = pass == Pass::kForward && g.relu;
    const bool finite = !(winograd || fused_relu) || PassInputsFinite(g, pass, args);
    if (inputs_finite != nullptr) *inputs_finite = finite;
    if (winograd && finite) {
      RunWinograd(g, pass, args);
    } else if (fused_relu && !finite) {
      Geometry linear = g;
      linear.relu = false;
      RunDirect(linear, pass, args);
      ReluKeepingNan(args.at(DNNL_ARG_DST), Count(g.dst), g.type);
    } else {
      RunDirect(g, pass, args);
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("murajax oneDNN convolution: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("murajax oneDNN convolution: out of host memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("murajax oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Run(const Geometry& g, Pass pass, const std::unordered_map<int, void*>& args) {
  std::lock_guard<std::mutex> lock(RunningLock());
  return RunLocked(g, pass, args);
}

// 2x2 max-pooling, stride 2, of an NHWC array (an odd last row or column is dropped), with
// oneDNN's workspace: which corner of each window won, one byte per pooled element, the first
// maximum in row-major order where corners tie (as XLA's select-and-scatter chooses).
struct PoolGeometry {
  memory::dims src, dst;  // logical NCHW
  memory::data_type type;

  std::string Key() const {
    std::string key = std::to_string(static_cast<int>(type));
    for (const auto* dims : {&src, &dst}) {
      key += "|";
      for (auto d : *dims) key += std::to_string(d) + ",";
    }
    return key;
  }
};

struct CachedPool {
  dnnl::pooling_forward forward;
  dnnl::pooling_backward backward;
  // The ReLU's gradient seen through the pooling: the pooled gradient where the pooled value is
  // positive, else 0 (a window's maximum is positive exactly where the ReLU passed its winner).
  dnnl::eltwise_backward relu_backward;
  memory::desc forward_scratchpad, backward_scratchpad, relu_scratchpad, workspace;
};

CachedPool BuildPool(const PoolGeometry& p) {
  auto src = memory::desc(p.src, p.type, tag::nhwc);
  auto dst = memory::desc(p.dst, p.type, tag::nhwc);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  memory::dims two = {2, 2}, zero = {0, 0};
  auto forward = dnnl::pooling_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, src, dst, two,
      two, zero, zero, zero, attr);
  auto backward = dnnl::pooling_backward::primitive_desc(
      Engine(), dnnl::algorithm::pooling_max, src, dst, two, two, zero, zero, zero, forward, attr);
  auto relu = dnnl::algorithm::eltwise_relu_use_dst_for_bwd;
  auto relu_forward = dnnl::eltwise_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, relu, dst, dst, 0.f, 0.f, attr);
  auto relu_backward =
      dnnl::eltwise_backward::primitive_desc(Engine(), relu, dst, dst, dst, 0.f, 0.f, relu_forward, attr);
  return {dnnl::pooling_forward(forward),    dnnl::pooling_backward(backward),
          dnnl::eltwise_backward(relu_backward), forward.scratchpad_desc(),
          backward.scratchpad_desc(),          relu_backward.scratchpad_desc(),
          forward.workspace_desc()};
}

const CachedPool& LookupPool(const PoolGeometry& p) {
  static std::mutex mutex;
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<CachedPool>>();
  std::string key = p.Key();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) {
    it = cache->emplace(key, std::make_unique<CachedPool>(BuildPool(p))).first;
  }
  return *it->second;
}

// Forward: pools `full` into `pooled` and `winner`. Backward: spreads the pooled gradient `g`,
// masked by the ReLU (`pooled` > 0), into `full` at each window's `winner`, zero elsewhere.
// While holding `RunningLock`.
ffi::Error RunPoolLocked(const PoolGeometry& p, void* full, void* pooled, void* winner,
                         size_t winner_bytes, const void* g = nullptr) {
  try {
    const CachedPool& cached = LookupPool(p);
    if (cached.workspace.get_size() > winner_bytes) {
      return ffi::Error::Internal("murajax oneDNN pooling: workspace larger than one byte each");
    }
    auto full_md = memory::desc(p.src, p.type, tag::nhwc);
    auto pooled_md = memory::desc(p.dst, p.type, tag::nhwc);
    memory workspace(cached.workspace, Engine(), winner);
    dnnl::stream& stream = ThreadStream();
    if (g == nullptr) {
      std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, memory(full_md, Engine(), full)},
                                              {DNNL_ARG_DST, memory(pooled_md, Engine(), pooled)},
                                              {DNNL_ARG_WORKSPACE, workspace}};
      AddScratchpad(args, cached.forward_scratchpad);
      cached.forward.execute(stream, args);
    } else {
      memory masked(pooled_md, Engine(), Buffer(kMaskedGradient, pooled_md.get_size()));
      std::unordered_map<int, memory> relu_args = {
          {DNNL_ARG_DST, memory(pooled_md, Engine(), pooled)},
          {DNNL_ARG_DIFF_DST, memory(pooled_md, Engine(), const_cast<void*>(g))},
          {DNNL_ARG_DIFF_SRC, masked}};
      AddScratchpad(relu_args, cached.relu_scratchpad);
      cached.relu_backward.execute(stream, relu_args);
      std::unordered_map<int, memory> args = {{DNNL_ARG_DIFF_DST, masked},
                                              {DNNL_ARG_DIFF_SRC, memory(full_md, Engine(), full)},
                                              {DNNL_ARG_WORKSPACE, workspace}};
      AddScratchpad(args, cached.backward_scratchpad);
      cached.backward.execute(stream, args);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("murajax oneDNN pooling: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("murajax oneDNN pooling: out of host memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("murajax oneDNN pooling: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                       ffi::Result<ffi::AnyBuffer> y, int64_t stride_h, int64_t stride_w,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                       bool winograd, bool has_bias, bool relu) {
  Geometry g;
  ffi::Error error = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(),
                                  x.element_type(), stride_h, stride_w, pad_top, pad_bottom,
                                  pad_left, pad_right, has_bias, relu, winograd, g);
  if (error.failure()) return error;
  error = CheckTypes(x.element_type(), {w.element_type(), y->element_type()});
  if (error.failure()) return error;
  error = CheckBias(g, has_bias, b);
  if (error.failure()) return error;
  std::unordered_map<int, void*> args = {{DNNL_ARG_SRC, x.untyped_data()},
                                         {DNNL_ARG_WEIGHTS, w.untyped_data()},
                                         {DNNL_ARG_DST, y->untyped_data()}};
  if (has_bias) args[DNNL_ARG_BIAS] = b.untyped_data();
  return Run(g, Pass::kForward, args);
}

ffi::Error ConvBackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                            int64_t stride_h, int64_t stride_w, int64_t pad_top,
                            int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                            bool winograd) {
  Geometry g;
  ffi::Error error = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(),
                                  dy.element_type(), stride_h, stride_w, pad_top, pad_bottom,
                                  pad_left, pad_right, false, false, winograd, g);
  if (error.failure()) return error;
  error = CheckTypes(dy.element_type(), {w.element_type(), dx->element_type()});
  if (error.failure()) return error;
  return Run(g, Pass::kBackwardData,
             {{DNNL_ARG_DIFF_DST, dy.untyped_data()},
              {DNNL_ARG_WEIGHTS, w.untyped_data()},
              {DNNL_ARG_DIFF_SRC, dx->untyped_data()}});
}

ffi::Error ConvBackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                               ffi::Result<ffi::AnyBuffer> dw, ffi::Result<ffi::AnyBuffer> db,
                               int64_t stride_h, int64_t stride_w, int64_t pad_top,
                               int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                               bool winograd, bool has_bias) {
  Geometry g;
  ffi::Error error = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(),
                                  x.element_type(), stride_h, stride_w, pad_top, pad_bottom,
                                  pad_left, pad_right, has_bias, false, winograd, g);
  if (error.failure()) return error;
  error = CheckTypes(x.element_type(), {dy.element_type(), dw->element_type()});
  if (error.failure()) return error;
  error = CheckBias(g, has_bias, *db);
  if (error.failure()) return error;
  std::unordered_map<int, void*> args = {{DNNL_ARG_SRC, x.untyped_data()},
                                         {DNNL_ARG_DIFF_DST, dy.untyped_data()},
                                         {DNNL_ARG_DIFF_WEIGHTS, dw->untyped_data()}};
  if (has_bias) args[DNNL_ARG_DIFF_BIAS] = db->untyped_data();
  return Run(g, Pass::kBackwardWeights, args);
}

size_t ElementBytes(ffi::DataType type) { return type == ffi::DataType::BF16 ? 2 : 4; }

// An error unless `pooled` and `winner` are the 2x2 pooling (stride 2, an odd last row or column
// dropped) of an NHWC array `full`, `winner` in uint8, all of them non-empty.
ffi::Error CheckPooled(ffi::AnyBuffer::Dimensions full, ffi::AnyBuffer::Dimensions pooled,
                       const ffi::AnyBuffer& winner) {
  if (full.size() != 4 || pooled.size() != 4 || full[0] != pooled[0] || full[3] != pooled[3] ||
      full[1] / 2 != pooled[1] || full[2] / 2 != pooled[2] ||
      !SameDims(pooled, winner.dimensions()) || winner.element_type() != ffi::DataType::U8) {
    return Invalid("pooled " + DimsText(pooled) + " and uint8 winner " +
                   DimsText(winner.dimensions()) + " do not fit the 2x2 pooling of " +
                   DimsText(full));
  }
  for (int64_t d : pooled) {
    if (d < 1) return Invalid("empty array " + DimsText(pooled) + " (XLA handles those)");
  }
  return ffi::Error::Success();
}

ffi::Error ConvReluPoolForward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b,
                               ffi::Result<ffi::AnyBuffer> pooled,
                               ffi::Result<ffi::AnyBuffer> winner, int64_t stride_h,
                               int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                               int64_t pad_left, int64_t pad_right, bool winograd,
                               bool has_bias) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 4) {
    return Invalid("NHWC x HWIO only, got " + DimsText(xd) + " x " + DimsText(wd));
  }
  std::vector<int64_t> yd = {xd[0], OutputSize(xd[1], wd[0], stride_h, pad_top, pad_bottom),
                             OutputSize(xd[2], wd[1], stride_w, pad_left, pad_right), wd[3]};
  Geometry g;
  ffi::Error error = MakeGeometry(xd, wd, yd, x.element_type(), stride_h, stride_w, pad_top,
                                  pad_bottom, pad_left, pad_right, has_bias, true, winograd, g);
  if (error.failure()) return error;
  error = CheckTypes(x.element_type(), {w.element_type(), pooled->element_type()});
  if (error.failure()) return error;
  error = CheckBias(g, has_bias, b);
  if (error.failure()) return error;
  error = CheckPooled(yd, pooled->dimensions(), *winner);
  if (error.failure()) return error;
  // The full-size output lives in a shared buffer: hold the lock from the convolution until
  // the pooling has read it.
  std::lock_guard<std::mutex> lock(RunningLock());
  void* y = nullptr;
  try {
    y = Buffer(kConvOutput, Count(g.dst) * ElementBytes(x.element_type()));
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("murajax oneDNN convolution: out of host memory");
  }
  std::unordered_map<int, void*> args = {{DNNL_ARG_SRC, x.untyped_data()},
                                         {DNNL_ARG_WEIGHTS, w.untyped_data()},
                                         {DNNL_ARG_DST, y}};
  if (has_bias) args[DNNL_ARG_BIAS] = b.untyped_data();
  bool finite = true;
  error = RunLocked(g, Pass::kForward, args, &finite);
  if (error.failure()) return error;
  auto pd = pooled->dimensions();
  PoolGeometry p{g.dst, {pd[0], pd[3], pd[1], pd[2]}, g.type};
  error = RunPoolLocked(p, y, pooled->untyped_data(), winner->untyped_data(),
                        winner->size_bytes());
  if (error.failure() || finite) return error;
  MarkNanWindows(y, pooled->untyped_data(), g.dst, g.type);
  return ffi::Error::Success();
}

ffi::Error UnpoolReluBackward(ffi::AnyBuffer pooled, ffi::AnyBuffer g, ffi::AnyBuffer winner,
                              ffi::Result<ffi::AnyBuffer> dy) {
  auto pd = pooled.dimensions();
  auto yd = dy->dimensions();
  memory::data_type type = DataType(g.element_type());
  if (type == memory::data_type::undef) {
    return Invalid("float32 or bfloat16 only");
  }
  ffi::Error error = CheckTypes(g.element_type(), {pooled.element_type(), dy->element_type()});
  if (error.failure()) return error;
  error = CheckPooled(yd, pd, winner);
  if (error.failure()) return error;
  if (!SameDims(pd, g.dimensions())) {
    return Invalid("the pooled gradient " + DimsText(g.dimensions()) + " must match " +
                   DimsText(pd));
  }
  PoolGeometry p{{yd[0], yd[3], yd[1], yd[2]}, {pd[0], pd[3], pd[1], pd[2]}, type};
  std::lock_guard<std::mutex> lock(RunningLock());
  return RunPoolLocked(p, dy->untyped_data(), pooled.untyped_data(), winner.untyped_data(),
                       winner.size_bytes(), g.untyped_data());
}

// The BatchNorm + ReLU handlers (batchnorm_relu.h). `x` is (..., stride): its rows are every
// axis but the last, of which the first `channels` (the size of `scale`) are normalised. `x`
// may also be bfloat16 bits as uint16 (a dense block keeps its buffer so: XLA:CPU updates a
// bfloat16 buffer in float32, not in place); its outputs are then bfloat16.
ffi::DataType ActivationType(ffi::DataType type) {
  return type == ffi::DataType::U16 ? ffi::DataType::BF16 : type;
}

ffi::Error InvalidBatchNorm(const std::string& what) {
  return ffi::Error::InvalidArgument("murajax BatchNorm: " + what);
}

struct BatchNormCall {
  bnrelu::Prefix prefix;
  bool bf16;
};

// The prefix that `x` and the per-channel float32 `vectors` describe, after checking that they
// fit together; `dense` (arrays of `channels` per row, as many rows) must match it too.
ffi::Error MakeBatchNormCall(const ffi::AnyBuffer& x,
                             std::initializer_list<const ffi::AnyBuffer*> vectors,
                             std::initializer_list<const ffi::AnyBuffer*> dense,
                             BatchNormCall* call) {
  auto xd = x.dimensions();
  const ffi::DataType type = ActivationType(x.element_type());
  if (DataType(type) == memory::data_type::undef) {
    return InvalidBatchNorm("x must be float32 or bfloat16");
  }
  if (xd.size() < 1 || x.element_count() == 0) {
    return InvalidBatchNorm("x must be a non-empty array, got " + DimsText(xd));
  }
  const int64_t stride = xd.back();
  const int64_t channels = (*vectors.begin())->element_count();
  if (channels < 1 || channels > stride) {
    return InvalidBatchNorm(std::to_string(channels) + " channels of x " + DimsText(xd) +
                            " (expected 1 to " + std::to_string(stride) + ")");
  }
  for (const ffi::AnyBuffer* v : vectors) {
    if (v->element_type() != ffi::DataType::F32 || v->element_count() != channels ||
        v->dimensions().size() != 1) {
      return InvalidBatchNorm("per-channel arrays must be float32 (" + std::to_string(channels) +
                              ",), got " + DimsText(v->dimensions()));
    }
  }
  const int64_t rows = x.element_count() / stride;
  for (const ffi::AnyBuffer* d : dense) {
    auto dd = d->dimensions();
    bool fits = ActivationType(d->element_type()) == type && dd.size() == xd.size() &&
                dd.back() == channels && d->element_count() == rows * channels;
    if (!fits) {
      return InvalidBatchNorm(DimsText(dd) + " does not fit x " + DimsText(xd) + " with " +
                              std::to_string(channels) + " channels, in x's dtype");
    }
  }
  call->prefix = {rows, stride, channels};
  call->bf16 = type == ffi::DataType::BF16;
  return ffi::Error::Success();
}

// The instruction set of the BatchNorm kernels: oneDNN's (the CPU's, or less under
// ONEDNN_MAX_CPU_ISA), so that tests can run each level on a CPU that has the highest.
bnrelu::Level BatchNormLevel() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx2:
    case dnnl::cpu_isa::avx2_vnni:
    case dnnl::cpu_isa::avx2_vnni_2:
      return bnrelu::Level::kAvx2;
    case dnnl::cpu_isa::avx512_core:
    case dnnl::cpu_isa::avx512_core_vnni:
    case dnnl::cpu_isa::avx512_core_bf16:
    case dnnl::cpu_isa::avx512_core_fp16:
    case dnnl::cpu_isa::avx512_core_amx:
    case dnnl::cpu_isa::avx512_core_amx_fp16:
      return bnrelu::Level::kAvx512;
    default:
      return bnrelu::Level::kBaseline;
  }
}

// The BatchNorm kernels' work space, at the instruction set they run at (while holding
// `RunningLock`).
float* BatchNormWork(const bnrelu::Prefix& p) {
  static const bool chosen = (bnrelu::Use(BatchNormLevel()), true);
  (void)chosen;
  return FloatBuffer(kBatchNormWork, bnrelu::WorkFloats(p));
}

// A buffer's data as T (float, or uint16_t for bfloat16 bits).
template <typename T>
T* Data(const ffi::AnyBuffer& b) {
  return static_cast<T*>(b.untyped_data());
}

// Runs `kernel(T{}, work)`, T the element type of `call` (float, or uint16_t for bfloat16),
// while holding `RunningLock`, with the kernels' work space.
template <typename Kernel>
ffi::Error RunBatchNorm(const BatchNormCall& call, Kernel kernel) {
  std::lock_guard<std::mutex> lock(RunningLock());
  try {
    float* work = BatchNormWork(call.prefix);
    if (call.bf16) {
      kernel(uint16_t{}, work);
    } else {
      kernel(float{}, work);
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal("murajax BatchNorm: out of host memory");
  }
  return ffi::Error::Success();
}

ffi::Error BnReluForward(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                         ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                         ffi::Result<ffi::AnyBuffer> var, float epsilon) {
  BatchNormCall call;
  ffi::Error error = MakeBatchNormCall(x, {&scale, &bias, &*mean, &*var}, {&*y}, &call);
  if (error.failure()) return error;
  return RunBatchNorm(call, [&](auto type, float* work) {
    using T = decltype(type);
    bnrelu::Forward(Data<T>(x), call.prefix, Data<float>(scale), Data<float>(bias), epsilon,
                    Data<T>(*y), Data<float>(*mean), Data<float>(*var), work);
  });
}

ffi::Error BnReluNormalize(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer bias,
                           ffi::AnyBuffer mean, ffi::AnyBuffer var, ffi::Result<ffi::AnyBuffer> y,
                           float epsilon) {
  BatchNormCall call;
  ffi::Error error = MakeBatchNormCall(x, {&scale, &bias, &mean, &var}, {&*y}, &call);
  if (error.failure()) return error;
  return RunBatchNorm(call, [&](auto type, float* work) {
    using T = decltype(type);
    bnrelu::Normalize(Data<T>(x), call.prefix, Data<float>(scale), Data<float>(bias),
                      Data<float>(mean), Data<float>(var), epsilon, Data<T>(*y), work);
  });
}

// The backward pass into `out`: a dense array (`accumulate` false) or one with x's rows whose
// first channels it adds to (`accumulate` true; XLA aliases it to an input).
ffi::Error RunBnReluBackward(const ffi::AnyBuffer& x, const ffi::AnyBuffer& g,
                             const ffi::AnyBuffer& scale, const ffi::AnyBuffer& bias,
                             const ffi::AnyBuffer& mean, const ffi::AnyBuffer& var,
                             ffi::AnyBuffer& out, ffi::AnyBuffer& dscale, ffi::AnyBuffer& dbias,
                             float epsilon, bool accumulate) {
  BatchNormCall call;
  ffi::Error error = MakeBatchNormCall(x, {&scale, &bias, &mean, &var, &dscale, &dbias},
                                       accumulate ? std::initializer_list<const ffi::AnyBuffer*>{&g}
                                                  : std::initializer_list<const ffi::AnyBuffer*>{
                                                        &g, &out},
                                       &call);
  if (error.failure()) return error;
  int64_t out_stride = call.prefix.channels;
  if (accumulate) {
    auto od = out.dimensions();
    out_stride = od.size() == 0 ? 0 : od.back();
    if (ActivationType(out.element_type()) != ActivationType(x.element_type()) ||
        od.size() != x.dimensions().size() || out_stride < call.prefix.channels ||
        out.element_count() != call.prefix.rows * out_stride) {
      return InvalidBatchNorm("the gradient to add to " + DimsText(od) + " does not fit x " +
                              DimsText(x.dimensions()));
    }
  }
  return RunBatchNorm(call, [&](auto type, float* work) {
    using T = decltype(type);
    bnrelu::Backward(Data<T>(x), call.prefix, Data<T>(g), Data<float>(scale), Data<float>(bias),
                     Data<float>(mean), Data<float>(var), epsilon, Data<T>(out), out_stride,
                     accumulate, Data<float>(dscale), Data<float>(dbias), work);
  });
}

ffi::Error BnReluBackward(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::AnyBuffer scale,
                          ffi::AnyBuffer bias, ffi::AnyBuffer mean, ffi::AnyBuffer var,
                          ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                          ffi::Result<ffi::AnyBuffer> dbias, float epsilon) {
  return RunBnReluBackward(x, g, scale, bias, mean, var, *dx, *dscale, *dbias, epsilon, false);
}

ffi::Error BnReluBackwardAdd(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::AnyBuffer scale,
                             ffi::AnyBuffer bias, ffi::AnyBuffer mean, ffi::AnyBuffer var,
                             ffi::AnyBuffer total, ffi::Result<ffi::AnyBuffer> sum,
                             ffi::Result<ffi::AnyBuffer> dscale,
                             ffi::Result<ffi::AnyBuffer> dbias, float epsilon) {
  if (sum->untyped_data() != total.untyped_data()) {
    return InvalidBatchNorm("the gradient to add to must be aliased to the output");
  }
  return RunBnReluBackward(x, g, scale, bias, mean, var, *sum, *dscale, *dbias, epsilon, true);
}

}  // namespace

namespace {

// A binding's strides and explicit padding, the attributes every convolution handler takes.
template <typename Binding>
auto WithConvAttributes(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right")
      .template Attr<bool>("winograd");
}

// `binding` with `kArgs` more buffer arguments, `kRets` buffer results and the attribute
// `epsilon`: a BatchNorm handler's binding. (Bindings cannot be moved, only extended, so the
// recursion ends by adding the attribute.)
template <int kArgs, int kRets, typename Binding>
auto WithBuffersAndEpsilon(Binding&& binding) {
  if constexpr (kArgs > 0) {
    return WithBuffersAndEpsilon<kArgs - 1, kRets>(
        std::move(binding).template Arg<ffi::AnyBuffer>());
  } else if constexpr (kRets > 0) {
    return WithBuffersAndEpsilon<0, kRets - 1>(std::move(binding).template Ret<ffi::AnyBuffer>());
  } else {
    return std::move(binding).template Attr<float>("epsilon");
  }
}

// (Called in parentheses inside XLA_FFI_DEFINE_HANDLER_SYMBOL: the comma between its template
// arguments would split the macro's arguments.)
template <int kArgs, int kRets>
auto BatchNormBinding() {
  return WithBuffersAndEpsilon<kArgs, kRets>(ffi::Ffi::Bind());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxOnednnConvFwd, ConvForward,
                              WithConvAttributes(ffi::Ffi::Bind()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Ret<ffi::AnyBuffer>())
                                  .Attr<bool>("has_bias")
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxOnednnConvBwdData, ConvBackwardData,
                              WithConvAttributes(ffi::Ffi::Bind()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxOnednnConvBwdWeights, ConvBackwardWeights,
                              WithConvAttributes(ffi::Ffi::Bind()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Ret<ffi::AnyBuffer>()
                                                     .Ret<ffi::AnyBuffer>())
                                  .Attr<bool>("has_bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxOnednnConvReluPoolFwd, ConvReluPoolForward,
                              WithConvAttributes(ffi::Ffi::Bind()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Arg<ffi::AnyBuffer>()
                                                     .Ret<ffi::AnyBuffer>()
                                                     .Ret<ffi::AnyBuffer>())
                                  .Attr<bool>("has_bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxOnednnUnpoolReluBwd, UnpoolReluBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxBnReluFwd, BnReluForward, (BatchNormBinding<3, 3>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxBnReluNormalize, BnReluNormalize,
                              (BatchNormBinding<5, 1>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxBnReluBwd, BnReluBackward, (BatchNormBinding<6, 3>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MurajaxBnReluBwdAdd, BnReluBackwardAdd,
                              (BatchNormBinding<7, 3>()));

// Which sources, compiler flags, jaxlib and oneDNN the library was built from (murajax/ops/
// onednn.py passes it and reads it back from the file before loading it, to refuse a stale one).
#ifndef MURAJAX_BUILD_ID
#define MURAJAX_BUILD_ID "unknown"
#endif
extern "C" __attribute__((used, visibility("default"))) const char murajax_onednn_build_id[] =
    "murajax-onednn-build:" MURAJAX_BUILD_ID;

// The instruction set murajax's BatchNorm kernels use here: "AVX512", "AVX2" or "baseline".
extern "C" const char* murajax_bn_level() {
  switch (BatchNormLevel()) {
    case bnrelu::Level::kAvx512:
      return "AVX512";
    case bnrelu::Level::kAvx2:
      return "AVX2";
    default:
      return "baseline";
  }
}

// The instruction set oneDNN's kernels use here (the CPU's, or less under ONEDNN_MAX_CPU_ISA).
extern "C" const char* murajax_onednn_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41:
      return "SSE41";
    case dnnl::cpu_isa::avx:
      return "AVX";
    case dnnl::cpu_isa::avx2:
      return "AVX2";
    case dnnl::cpu_isa::avx2_vnni:
      return "AVX2_VNNI";
    case dnnl::cpu_isa::avx2_vnni_2:
      return "AVX2_VNNI_2";
    case dnnl::cpu_isa::avx512_core:
      return "AVX512_CORE";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "AVX512_CORE_VNNI";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "AVX512_CORE_BF16";
    case dnnl::cpu_isa::avx512_core_fp16:
      return "AVX512_CORE_FP16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "AVX512_CORE_AMX";
    case dnnl::cpu_isa::avx512_core_amx_fp16:
      return "AVX512_CORE_AMX_FP16";
    default:
      return "the x86-64 baseline";
  }
}

namespace {

// Runs each of the five handlers' primitives once on a tiny problem of `type` and checks the
// forward values; the error says which failed.
ffi::Error Probe(memory::data_type type) {
  const int64_t n = 1, size = 4, channels = 2;
  Geometry g;
  g.src = {n, channels, size, size};
  g.wei = {channels, channels, 3, 3};
  g.dst = {n, channels, size, size};
  g.bias = {channels};
  g.strides = {1, 1};
  g.pad_l = {1, 1};
  g.pad_r = {1, 1};
  g.type = type;
  g.has_bias = true;
  g.relu = true;
  const size_t bytes = type == memory::data_type::f32 ? 4 : 2;
  auto ones = [&](int64_t count) {
    std::vector<uint8_t> data(count * bytes);
    for (int64_t i = 0; i < count; ++i) {
      if (bytes == 4) {
        reinterpret_cast<float*>(data.data())[i] = 1.f;
      } else {
        reinterpret_cast<uint16_t*>(data.data())[i] = 0x3f80;  // 1.0 in bfloat16
      }
    }
    return data;
  };
  auto x = ones(Count(g.src)), w = ones(Count(g.wei)), b = ones(channels), y = ones(Count(g.dst));
  auto dx = ones(Count(g.src)), dw = ones(Count(g.wei)), db = ones(channels);
  ffi::Error error = Run(g, Pass::kForward,
                         {{DNNL_ARG_SRC, x.data()},
                          {DNNL_ARG_WEIGHTS, w.data()},
                          {DNNL_ARG_BIAS, b.data()},
                          {DNNL_ARG_DST, y.data()}});
  if (error.failure()) return error;
  // NHWC: pixel (1, 1) sees 9 inputs of 2 channels (18, + 1 bias), the corner pixel 4 (8 + 1).
  float centre, corner;
  if (bytes == 4) {
    centre = reinterpret_cast<float*>(y.data())[(1 * size + 1) * channels];
    corner = reinterpret_cast<float*>(y.data())[0];
  } else {
    auto widen = [](uint16_t h) {
      uint32_t bits = static_cast<uint32_t>(h) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    };
    centre = widen(reinterpret_cast<uint16_t*>(y.data())[(1 * size + 1) * channels]);
    corner = widen(reinterpret_cast<uint16_t*>(y.data())[0]);
  }
  if (centre != 19.f || corner != 9.f) {
    return ffi::Error::Internal("a test convolution gave " + std::to_string(centre) + " and " +
                                std::to_string(corner) + ", expected 19 and 9");
  }
  g.relu = false;
  error = Run(g, Pass::kBackwardData,
              {{DNNL_ARG_DIFF_DST, y.data()}, {DNNL_ARG_WEIGHTS, w.data()},
               {DNNL_ARG_DIFF_SRC, dx.data()}});
  if (error.failure()) return error;
  error = Run(g, Pass::kBackwardWeights,
              {{DNNL_ARG_SRC, x.data()}, {DNNL_ARG_DIFF_DST, y.data()},
               {DNNL_ARG_DIFF_WEIGHTS, dw.data()}, {DNNL_ARG_DIFF_BIAS, db.data()}});
  if (error.failure()) return error;
  PoolGeometry p{g.dst, {n, channels, size / 2, size / 2}, type};
  auto pooled = ones(Count(p.dst)), gradient = ones(Count(p.dst));
  std::vector<uint8_t> winner(Count(p.dst));
  std::lock_guard<std::mutex> lock(RunningLock());
  error = RunPoolLocked(p, y.data(), pooled.data(), winner.data(), winner.size());
  if (error.failure()) return error;
  return RunPoolLocked(p, dx.data(), pooled.data(), winner.data(), winner.size(),
                       gradient.data());
}

}  // namespace

// 1 if oneDNN runs every primitive murajax uses in `type` ("f32" or "bf16") here, else 0 with
// the reason in `message`. Python calls it once per dtype before using that dtype.
extern "C" int murajax_onednn_probe(const char* type, char* message, int size) {
  try {
    std::string name = type;
    if (name != "f32" && name != "bf16") {
      std::snprintf(message, size, "unknown dtype %s (f32 or bf16)", type);
      return 0;
    }
    ffi::Error error = Probe(name == "f32" ? memory::data_type::f32 : memory::data_type::bf16);
    if (error.failure()) {
      std::snprintf(message, size, "%s", error.message().c_str());
      return 0;
    }
  } catch (const std::exception& e) {
    std::snprintf(message, size, "%s", e.what());
    return 0;
  }
  return 1;
}
