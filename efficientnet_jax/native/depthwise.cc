// Depthwise convolution for XLA:CPU, forward and backward, as XLA FFI custom calls.
//
// NHWC activations, a (k, k, C) kernel, any stride and top/left padding (the bottom/right
// padding follows from the output shape). float32 or bfloat16 storage; every sum runs in
// float32. The forward also applies a per-channel affine map and an activation to its float32
// sums (inference BatchNorm + swish/relu6 without another pass over the output), and can apply
// another such map and activation to its input as it reads it (the BatchNorm + activation of
// the layer before; each input row is transformed once into a ring of k rows). Work is split
// over output rows (forward, weight gradient) or input rows (input gradient) on XLA's
// intra-op thread pool. The weight gradient sums fixed chunks of rows and
// then the chunks in order, so results do not depend on the number of threads.
//
// Built by efficientnet_jax/native/build.py with the host compiler (-O3 -march=native).

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string_view>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The weight gradient is summed per chunk of output rows, at most this many chunks.
constexpr int64_t kMaxChunks = 64;
// The largest kernel size (row pointers live on the stack).
constexpr int64_t kMaxKernel = 16;

inline float ToFloat(float v) { return v; }
inline float ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
inline T FromFloat(float v);
template <>
inline float FromFloat<float>(float v) { return v; }
template <>
inline uint16_t FromFloat<uint16_t>(float v) {  // round to nearest even, NaN kept NaN
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

enum class Activation { kNone, kSwish, kRelu6 };

// e^v for v in [-87, 88] (callers clamp), relative error ~2e-7: 2^n * p(r), v = n ln2 + r.
// Branch-free and without library calls so that loops over channels vectorize (adding and
// subtracting 1.5 * 2^23 rounds to the nearest integer; roundf blocked vectorization).
inline float Exp(float v) {
  const float n = (v * 1.44269504f + 12582912.0f) - 12582912.0f;
  const float r = v - n * 0.693145752f - n * 1.42860677e-6f;
  float p = 1.98756912e-4f;
  p = p * r + 1.39819994e-3f;
  p = p * r + 8.33345205e-3f;
  p = p * r + 4.16664555e-2f;
  p = p * r + 1.66666657e-1f;
  p = p * r + 5.00000000e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(n) << 23;
  std::memcpy(&p, &bits, sizeof(p));
  return p;
}

template <Activation A>
inline float Activate(float v) {
  if constexpr (A == Activation::kSwish) {
    return v / (1.0f + Exp(std::min(std::max(-v, -87.0f), 88.0f)));
  } else if constexpr (A == Activation::kRelu6) {
    return std::min(std::max(v, 0.0f), 6.0f);
  } else {
    return v;
  }
}

struct Geometry {
  int64_t n, h, w, c, k, stride, pad_top, pad_left, out_h, out_w;

  int64_t x_offset(int64_t b, int64_t row, int64_t col) const { return ((b * h + row) * w + col) * c; }
  int64_t y_offset(int64_t b, int64_t row, int64_t col) const {
    return ((b * out_h + row) * out_w + col) * c;
  }
};

// Runs body(i) for i in [0, items) on the calling thread and the pool's threads. A task
// that starts after all items are claimed returns at once; the caller waits until every
// item has finished.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t items, const F& body) {
  const int64_t workers = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), items);
  if (workers <= 1) {
    for (int64_t i = 0; i < items; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const F* fn = &body;
  auto run = [state, items, fn]() {
    int64_t finished = 0;
    for (int64_t i; (i = state->next.fetch_add(1, std::memory_order_relaxed)) < items;) {
      (*fn)(i);
      ++finished;
    }
    if (finished > 0 && state->done.fetch_add(finished) + finished == items) {
      { std::lock_guard<std::mutex> lock(state->mu); }
      state->cv.notify_all();
    }
  };
  for (int64_t t = 1; t < workers; ++t) pool.Schedule(decltype(run)(run));
  run();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == items; });
}

// The buffer's elements as T (uint16_t holds bfloat16 bits; AnyBuffer::typed_data asserts
// that T is the buffer's own type, which bfloat16 has no C++ type for).
template <typename T>
T* Data(ffi::AnyBuffer buffer) {
  return static_cast<T*>(buffer.untyped_data());
}

template <typename W>
std::vector<float> KernelToFloat(const W* w, int64_t count) {
  std::vector<float> out(count);
  for (int64_t i = 0; i < count; ++i) out[i] = ToFloat(w[i]);
  return out;
}

// Channel blocks: a body templated on the block width B (64, then 16, then the rest with
// B = 0 and a runtime width below 16), so the compiler unrolls and vectorizes each width.
template <typename Body>
inline void ForChannelBlocks(int64_t channels, Body&& body) {
  int64_t c0 = 0;
  for (; c0 + 64 <= channels; c0 += 64) body(std::integral_constant<int64_t, 64>(), c0, 64);
  for (; c0 + 16 <= channels; c0 += 16) body(std::integral_constant<int64_t, 16>(), c0, 16);
  if (c0 < channels) body(std::integral_constant<int64_t, 0>(), c0, channels - c0);
}

constexpr int64_t kLanes = 16;
// How many output pixels ahead the forward prefetches its input.
constexpr int64_t kPrefetchPixels = 4;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec LoadVec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline Vec LoadVec(const uint16_t* p) {  // bfloat16 bits -> float32
  typedef uint16_t Halves __attribute__((vector_size(kLanes * sizeof(uint16_t))));
  typedef uint32_t Words __attribute__((vector_size(kLanes * sizeof(uint32_t))));
  Halves h;
  std::memcpy(&h, p, sizeof(h));
  const Words w = __builtin_convertvector(h, Words) << 16;
  Vec v;
  std::memcpy(&v, &w, sizeof(v));
  return v;
}

// Sums of products over one block of channels. B > 0 (a multiple of 16): B / 16 vectors that
// the compiler keeps in registers across all taps (a float array here made every tap
// store and reload the sums: 10x slower). B == 0: fewer than 16 channels, one lane each.
template <int64_t B>
struct Accumulator {
  static constexpr int64_t kVecs = B / kLanes;
  Vec v[kVecs] = {};

  template <typename X, typename Y>
  void MultiplyAdd(const X* a, const Y* b, int64_t /*width*/) {
    for (int64_t i = 0; i < kVecs; ++i) v[i] += LoadVec(a + i * kLanes) * LoadVec(b + i * kLanes);
  }
  void Store(float* out) const { std::memcpy(out, v, sizeof(v)); }
};

template <>
struct Accumulator<0> {
  float v[kLanes] = {};

  template <typename X, typename Y>
  void MultiplyAdd(const X* a, const Y* b, int64_t width) {
    for (int64_t c = 0; c < width; ++c) v[c] += ToFloat(a[c]) * ToFloat(b[c]);
  }
  void Store(float* out) const { std::memcpy(out, v, sizeof(v)); }
};

// y[b, oy, ox, :] = act(mul * sum over taps (i, j) of x[b, oy*s + i - pt, ox*s + j - pl, :] *
// w[i, j, :] + add). rows[i] points at input row oy*s + i - pt of image b (column 0); rows
// outside the image are not read. The `upcoming_bytes` at `upcoming` (what the caller reads
// next) are prefetched a slice per output pixel.
template <Activation A, typename T>
void ForwardRow(const Geometry& g, const T* const* rows, const float* w, const float* mul,
                const float* add, T* y, int64_t b, int64_t oy, const char* upcoming = nullptr,
                int64_t upcoming_bytes = 0) {
  const int64_t y0 = oy * g.stride - g.pad_top;
  const int64_t i_lo = std::max<int64_t>(0, -y0), i_hi = std::min<int64_t>(g.k, g.h - y0);
  for (int64_t ox = 0; ox < g.out_w; ++ox) {
    const int64_t x0 = ox * g.stride - g.pad_left;
    const int64_t j_lo = std::max<int64_t>(0, -x0), j_hi = std::min<int64_t>(g.k, g.w - x0);
    T* out = y + g.y_offset(b, oy, ox);
    for (int64_t byte = upcoming_bytes * ox / g.out_w & ~int64_t{63},
                 end = upcoming_bytes * (ox + 1) / g.out_w;
         byte < end; byte += 64) {
      __builtin_prefetch(upcoming + byte);
    }
    // Prefetch the input this row reads a few pixels ahead: the k row streams (at one row's
    // distance from each other) are more than the hardware prefetcher follows.
    const int64_t ahead = x0 + kPrefetchPixels * g.stride + g.k - 1;
    if (ahead < g.w) {
      for (int64_t i = i_lo; i < i_hi; ++i) {
        const char* p = reinterpret_cast<const char*>(rows[i] + ahead * g.c);
        for (int64_t byte = 0; byte < g.c * static_cast<int64_t>(sizeof(T)); byte += 64) {
          __builtin_prefetch(p + byte);
        }
      }
    }
    ForChannelBlocks(g.c, [&](auto block, int64_t c0, int64_t width) {
      constexpr int64_t B = decltype(block)::value;
      Accumulator<B> acc;
      for (int64_t i = i_lo; i < i_hi; ++i) {
        for (int64_t j = j_lo; j < j_hi; ++j) {
          acc.MultiplyAdd(rows[i] + (x0 + j) * g.c + c0, w + (i * g.k + j) * g.c + c0, width);
        }
      }
      float sums[B > 0 ? B : kLanes];
      acc.Store(sums);
      const int64_t n = B > 0 ? B : width;
      for (int64_t c = 0; c < n; ++c) {
        out[c0 + c] = FromFloat<T>(Activate<A>(sums[c] * mul[c0 + c] + add[c0 + c]));
      }
    });
  }
}

// dst[col, :] = act(src[col, :] * mul + add) for one input row, stored as T like the input
// the unfused layers would have written.
template <Activation A, typename T>
void TransformRow(const Geometry& g, const T* src, const float* mul, const float* add, T* dst) {
  for (int64_t col = 0; col < g.w; ++col) {
    for (int64_t c = 0; c < g.c; ++c) {
      dst[col * g.c + c] = FromFloat<T>(Activate<A>(ToFloat(src[col * g.c + c]) * mul[c] + add[c]));
    }
  }
}

// The taps of one axis that read input position `in`: tap t = first + m*s was read by
// output position out0 - m, for skip <= m < count (inside the kernel and the output).
// Computed once per input row / column: an integer division per tap and channel block was
// most of the input gradient's time.
struct TapRange {
  int64_t first, out0, skip, count;

  TapRange(int64_t in, int64_t pad, int64_t k, int64_t s, int64_t out_size) {
    first = (in + pad) % s;
    out0 = (in + pad - first) / s;
    skip = std::max<int64_t>(0, out0 - out_size + 1);
    count = first < k ? std::min((k - 1 - first) / s + 1, out0 + 1) : 0;
  }
};

// dx[b, iy, ix, :] = sum over taps (i, j) whose output (oy, ox) read (iy, ix) of dy * w[i, j]:
// iy + pt - i = oy * s and ix + pl - j = ox * s.
template <typename T>
void InputGradRow(const Geometry& g, const T* dy, const float* w, T* dx, int64_t b, int64_t iy) {
  const TapRange rows(iy, g.pad_top, g.k, g.stride, g.out_h);
  for (int64_t ix = 0; ix < g.w; ++ix) {
    const TapRange cols(ix, g.pad_left, g.k, g.stride, g.out_w);
    T* out = dx + g.x_offset(b, iy, ix);
    ForChannelBlocks(g.c, [&](auto block, int64_t c0, int64_t width) {
      constexpr int64_t B = decltype(block)::value;
      Accumulator<B> acc;
      for (int64_t mi = rows.skip; mi < rows.count; ++mi) {
        const int64_t i = rows.first + mi * g.stride;
        for (int64_t mj = cols.skip; mj < cols.count; ++mj) {
          const int64_t j = cols.first + mj * g.stride;
          acc.MultiplyAdd(dy + g.y_offset(b, rows.out0 - mi, cols.out0 - mj) + c0,
                          w + (i * g.k + j) * g.c + c0, width);
        }
      }
      float sums[B > 0 ? B : kLanes];
      acc.Store(sums);
      for (int64_t c = 0; c < width; ++c) out[c0 + c] = FromFloat<T>(sums[c]);
    });
  }
}

// dw[i, j, :] += sum over the output pixels of row (b, oy) of x[window (i, j)] * dy.
template <typename T>
void KernelGradRow(const Geometry& g, const T* x, const T* dy, float* dw, int64_t b, int64_t oy) {
  const int64_t y0 = oy * g.stride - g.pad_top;
  for (int64_t i = 0; i < g.k; ++i) {
    if (y0 + i < 0 || y0 + i >= g.h) continue;
    for (int64_t j = 0; j < g.k; ++j) {
      // Output columns whose tap j lands inside the image: 0 <= ox*s + j - pl < w.
      const int64_t lo_num = g.pad_left - j, hi_num = g.w - 1 + g.pad_left - j;
      const int64_t ox_lo = lo_num <= 0 ? 0 : (lo_num + g.stride - 1) / g.stride;
      const int64_t ox_hi = hi_num < 0 ? 0 : std::min<int64_t>(g.out_w, hi_num / g.stride + 1);
      ForChannelBlocks(g.c, [&](auto block, int64_t c0, int64_t width) {
        constexpr int64_t B = decltype(block)::value;
        Accumulator<B> acc;
        for (int64_t ox = ox_lo; ox < ox_hi; ++ox) {
          acc.MultiplyAdd(x + g.x_offset(b, y0 + i, ox * g.stride + j - g.pad_left) + c0,
                          dy + g.y_offset(b, oy, ox) + c0, width);
        }
        float sums[B > 0 ? B : kLanes];
        acc.Store(sums);
        float* out = dw + (i * g.k + j) * g.c + c0;
        for (int64_t c = 0; c < width; ++c) out[c] += sums[c];
      });
    }
  }
}

ffi::Error CheckTypes(ffi::DataType x, ffi::DataType w) {
  auto ok = [](ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::BF16; };
  if (!ok(x) || !ok(w)) {
    return ffi::Error::InvalidArgument(
        "native depthwise convolution supports float32 and bfloat16 only");
  }
  return ffi::Error::Success();
}

ffi::Error MakeGeometry(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Span<const int64_t> out_dims,
                        int64_t stride, int64_t pad_top, int64_t pad_left, Geometry* g) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 4 || wd.size() != 3 || out_dims.size() != 4 || wd[0] != wd[1] ||
      wd[2] != xd[3] || out_dims[0] != xd[0] || out_dims[3] != xd[3] || stride < 1) {
    return ffi::Error::InvalidArgument(
        "native depthwise convolution wants x (N, H, W, C), w (k, k, C), dy (N, OH, OW, C)");
  }
  if (wd[0] > kMaxKernel) {
    return ffi::Error::InvalidArgument(
        "native depthwise convolution: kernel size over 16; use model.depthwise='shifted' or "
        "'conv' for larger kernels");
  }
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], wd[0], stride, pad_top, pad_left,
                out_dims[1], out_dims[2]};
  return ffi::Error::Success();
}

// Row pointers into x for output row oy of image b.
template <typename T>
void InputRows(const Geometry& g, const T* x, int64_t b, int64_t oy, const T** rows) {
  const int64_t y0 = oy * g.stride - g.pad_top;
  for (int64_t i = 0; i < g.k; ++i) {
    rows[i] = y0 + i >= 0 && y0 + i < g.h ? x + g.x_offset(b, y0 + i, 0) : nullptr;
  }
}

template <Activation A, typename T>
void Forward(ffi::ThreadPool& pool, const Geometry& g, const T* x, const std::vector<float>& w,
             const float* mul, const float* add, T* y) {
  ParallelFor(pool, g.n * g.out_h, [&](int64_t r) {
    const T* rows[kMaxKernel];
    InputRows(g, x, r / g.out_h, r % g.out_h, rows);
    ForwardRow<A>(g, rows, w.data(), mul, add, y, r / g.out_h, r % g.out_h);
  });
}

// The forward of act_in(x * in_mul + in_add). Each task takes consecutive output rows of one
// image and transforms each input row once into a ring of k rows (row r in slot r % k: the
// rows an output row reads are k consecutive ones, and they only move forward).
template <Activation A, Activation AIn, typename T>
void ForwardTransformed(ffi::ThreadPool& pool, const Geometry& g, const T* x,
                        const std::vector<float>& w, const float* mul, const float* add,
                        const float* in_mul, const float* in_add, T* y) {
  if (g.n == 0 || g.out_h == 0) return;
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t chunks = std::clamp<int64_t>((4 * threads + g.n - 1) / g.n, 1, g.out_h);
  ParallelFor(pool, g.n * chunks, [&](int64_t task) {
    const int64_t b = task / chunks, chunk = task % chunks;
    std::unique_ptr<T[]> ring(new T[g.k * g.w * g.c]);
    int64_t next = 0;  // rows below are in the ring (none yet; rows are >= 0)
    for (int64_t oy = g.out_h * chunk / chunks; oy < g.out_h * (chunk + 1) / chunks; ++oy) {
      const T* rows[kMaxKernel];
      InputRows(g, x, b, oy, rows);
      const int64_t y0 = oy * g.stride - g.pad_top;
      for (int64_t i = 0; i < g.k; ++i) {
        if (rows[i] == nullptr) continue;
        T* slot = ring.get() + ((y0 + i) % g.k) * g.w * g.c;
        if (y0 + i >= next) {
          TransformRow<AIn>(g, rows[i], in_mul, in_add, slot);
          next = y0 + i + 1;
        }
        rows[i] = slot;
      }
      // The rows the next output row transforms stream in while this one is computed.
      const int64_t upcoming_rows = std::clamp<int64_t>(g.h - next, 0, g.stride);
      const char* upcoming = upcoming_rows > 0
          ? reinterpret_cast<const char*>(x + g.x_offset(b, next, 0))
          : nullptr;
      ForwardRow<A>(g, rows, w.data(), mul, add, y, b, oy, upcoming,
                    upcoming_rows * g.w * g.c * static_cast<int64_t>(sizeof(T)));
    }
  });
}

template <Activation A, typename T>
void Forward(ffi::ThreadPool& pool, Activation in_act, const Geometry& g, const T* x,
             const std::vector<float>& w, const float* mul, const float* add,
             const float* in_mul, const float* in_add, T* y) {
  switch (in_act) {
    case Activation::kSwish:
      return ForwardTransformed<A, Activation::kSwish>(pool, g, x, w, mul, add, in_mul, in_add, y);
    case Activation::kRelu6:
      return ForwardTransformed<A, Activation::kRelu6>(pool, g, x, w, mul, add, in_mul, in_add, y);
    case Activation::kNone:
      return Forward<A>(pool, g, x, w, mul, add, y);
  }
}

template <typename T>
void Forward(ffi::ThreadPool& pool, Activation act, Activation in_act, const Geometry& g,
             const T* x, const std::vector<float>& w, const float* mul, const float* add,
             const float* in_mul, const float* in_add, T* y) {
  switch (act) {
    case Activation::kSwish:
      return Forward<Activation::kSwish>(pool, in_act, g, x, w, mul, add, in_mul, in_add, y);
    case Activation::kRelu6:
      return Forward<Activation::kRelu6>(pool, in_act, g, x, w, mul, add, in_mul, in_add, y);
    case Activation::kNone:
      return Forward<Activation::kNone>(pool, in_act, g, x, w, mul, add, in_mul, in_add, y);
  }
}

bool ParseActivation(std::string_view name, Activation* a) {
  if (name == "none") {
    *a = Activation::kNone;
  } else if (name == "swish") {
    *a = Activation::kSwish;
  } else if (name == "relu6") {
    *a = Activation::kRelu6;
  } else {
    return false;
  }
  return true;
}

template <typename T, typename W>
void Backward(ffi::ThreadPool& pool, const Geometry& g, const T* x, const std::vector<float>& w,
              const T* dy, T* dx, W* dw) {
  ParallelFor(pool, g.n * g.h, [&](int64_t r) {
    InputGradRow(g, dy, w.data(), dx, r / g.h, r % g.h);
  });
  const int64_t rows = g.n * g.out_h, taps = g.k * g.k * g.c;
  const int64_t chunks = std::min(rows, kMaxChunks);
  std::vector<float> partial(chunks * taps, 0.0f);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    float* part = partial.data() + chunk * taps;
    for (int64_t r = rows * chunk / chunks; r < rows * (chunk + 1) / chunks; ++r) {
      KernelGradRow(g, x, dy, part, r / g.out_h, r % g.out_h);
    }
  });
  for (int64_t t = 0; t < taps; ++t) {
    float sum = 0.0f;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) sum += partial[chunk * taps + t];
    dw[t] = FromFloat<W>(sum);
  }
}

ffi::Error DepthwiseForward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                            ffi::Buffer<ffi::F32> mul, ffi::Buffer<ffi::F32> add,
                            ffi::Buffer<ffi::F32> in_mul, ffi::Buffer<ffi::F32> in_add,
                            ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t pad_top,
                            int64_t pad_left, std::string_view activation,
                            std::string_view input_activation) {
  if (auto e = CheckTypes(x.element_type(), w.element_type()); e.failure()) return e;
  if (y->element_type() != x.element_type()) {
    return ffi::Error::InvalidArgument("native depthwise: output dtype must equal input dtype");
  }
  Geometry g;
  if (auto e = MakeGeometry(x, w, y->dimensions(), stride, pad_top, pad_left, &g); e.failure()) {
    return e;
  }
  for (const auto* v : {&mul, &add, &in_mul, &in_add}) {
    if (v->element_count() != static_cast<size_t>(g.c)) {
      return ffi::Error::InvalidArgument(
          "native depthwise: mul, add, in_mul and in_add need one value per channel");
    }
  }
  Activation a, in_a;
  if (!ParseActivation(activation, &a) || !ParseActivation(input_activation, &in_a)) {
    return ffi::Error::InvalidArgument("native depthwise: activation must be none, swish or relu6");
  }
  const int64_t taps = g.k * g.k * g.c;
  std::vector<float> wf = w.element_type() == ffi::DataType::F32
                              ? KernelToFloat(Data<float>(w), taps)
                              : KernelToFloat(Data<uint16_t>(w), taps);
  auto run = [&](auto* xs, auto* ys) {
    Forward(pool, a, in_a, g, xs, wf, mul.typed_data(), add.typed_data(), in_mul.typed_data(),
            in_add.typed_data(), ys);
  };
  if (x.element_type() == ffi::DataType::F32) {
    run(Data<float>(x), Data<float>(*y));
  } else {
    run(Data<uint16_t>(x), Data<uint16_t>(*y));
  }
  return ffi::Error::Success();
}

ffi::Error DepthwiseBackward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                             ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx,
                             ffi::Result<ffi::AnyBuffer> dw, int64_t stride, int64_t pad_top,
                             int64_t pad_left) {
  if (auto e = CheckTypes(x.element_type(), w.element_type()); e.failure()) return e;
  if (dy.element_type() != x.element_type() || dx->element_type() != x.element_type() ||
      dw->element_type() != w.element_type()) {
    return ffi::Error::InvalidArgument(
        "native depthwise: dy and dx must have x's dtype, dw must have w's dtype");
  }
  Geometry g;
  if (auto e = MakeGeometry(x, w, dy.dimensions(), stride, pad_top, pad_left, &g); e.failure()) {
    return e;
  }
  const int64_t taps = g.k * g.k * g.c;
  const bool w_f32 = w.element_type() == ffi::DataType::F32;
  std::vector<float> wf = w_f32 ? KernelToFloat(Data<float>(w), taps)
                                : KernelToFloat(Data<uint16_t>(w), taps);
  auto run = [&](auto* xs, auto* dys, auto* dxs) {
    if (w_f32) {
      Backward(pool, g, xs, wf, dys, dxs, Data<float>(*dw));
    } else {
      Backward(pool, g, xs, wf, dys, dxs, Data<uint16_t>(*dw));
    }
  };
  if (x.element_type() == ffi::DataType::F32) {
    run(Data<float>(x), Data<float>(dy), Data<float>(*dx));
  } else {
    run(Data<uint16_t>(x), Data<uint16_t>(dy), Data<uint16_t>(*dx));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EjxDepthwiseForward, DepthwiseForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<std::string_view>("activation")
                                  .Attr<std::string_view>("input_activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EjxDepthwiseBackward, DepthwiseBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
