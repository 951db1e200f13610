// Device memory, streams, events and graphs behind plain C++ handles, so that programs and
// tests that never include CUDA headers can own GPU resources. Every handle is RAII and
// move-only; errors throw ds4::Error (through DS4_CUDA_CHECK in buffer.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace ds4::cuda {

// One cudaMalloc'd allocation (256-byte aligned, so 16-byte vector loads are always legal).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t size() const { return bytes_; }

  // Synchronous copies (host memory may be pageable); offset and size in bytes.
  void upload(const void* src, size_t bytes, size_t offset = 0);
  void download(void* dst, size_t bytes, size_t offset = 0) const;
  // Sets every byte to `value` (asynchronous on the default stream, then synchronized).
  void fill_bytes(uint8_t value);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A non-blocking CUDA stream; handle() is the cudaStream_t, passed to the kernel entry points
// as void*. A default-constructed Stream is the legacy default stream (handle nullptr).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(Stream&& o) noexcept;
  Stream& operator=(Stream&& o) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  void* handle() const { return s_; }
  void synchronize() const;

 private:
  void* s_ = nullptr;
};

// An event that orders two streams (no timing): record(a) marks the work enqueued on stream a
// so far; wait_in(b) makes the work enqueued on b afterwards wait for it. Inside a stream
// capture the pair becomes a graph edge and brings b into the capture (b must then be joined
// back into the capturing stream the same way before the capture ends).
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(void* stream);
  void wait_in(void* stream) const;

 private:
  void* e_ = nullptr;
};

// A pair of events timing the work enqueued between start() and stop() on one stream.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  void start(void* stream);
  void stop(void* stream);
  float elapsed_ms() const;  // waits for the stop event

 private:
  void* a_ = nullptr;
  void* b_ = nullptr;
};

// A CUDA graph captured from the launches `record` enqueues on `stream`; launch() replays
// it with one submission, which removes the per-kernel launch gaps of a decode step.
class Graph {
 public:
  Graph(void* stream, const std::function<void(void* stream)>& record);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void launch(void* stream) const;

 private:
  void* graph_ = nullptr;
  void* exec_ = nullptr;
};

// Throws ds4::Error if a previous asynchronous launch failed (cudaGetLastError).
void check_last_error(const char* what);
// Blocks until all work on the device is done.
void device_synchronize();

}  // namespace ds4::cuda
