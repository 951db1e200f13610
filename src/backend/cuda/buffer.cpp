#include "backend/cuda/buffer.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "backend/cuda/check.h"
#include "core/error.h"

namespace ds4::cuda {

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) DS4_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* src, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_) fail("cuda upload: {} bytes at {} exceed the buffer ({})", bytes, offset, bytes_);
  DS4_CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice));
}

void DeviceBuffer::download(void* dst, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_) fail("cuda download: {} bytes at {} exceed the buffer ({})", bytes, offset, bytes_);
  DS4_CUDA_CHECK(cudaMemcpy(dst, static_cast<const uint8_t*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost));
}

void DeviceBuffer::fill_bytes(uint8_t value) {
  if (bytes_ == 0) return;
  DS4_CUDA_CHECK(cudaMemset(ptr_, value, bytes_));
  DS4_CUDA_CHECK(cudaDeviceSynchronize());
}

Stream::Stream() {
  cudaStream_t s = nullptr;
  DS4_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  s_ = s;
}

Stream::~Stream() {
  if (s_) cudaStreamDestroy(static_cast<cudaStream_t>(s_));
}

Stream::Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}

Stream& Stream::operator=(Stream&& o) noexcept {
  if (this != &o) {
    if (s_) cudaStreamDestroy(static_cast<cudaStream_t>(s_));
    s_ = std::exchange(o.s_, nullptr);
  }
  return *this;
}

void Stream::synchronize() const { DS4_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s_))); }

Event::Event() {
  cudaEvent_t e = nullptr;
  DS4_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  e_ = e;
}

Event::~Event() { cudaEventDestroy(static_cast<cudaEvent_t>(e_)); }

void Event::record(void* stream) {
  DS4_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(e_), static_cast<cudaStream_t>(stream)));
}

void Event::wait_in(void* stream) const {
  DS4_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(e_), 0));
}

EventTimer::EventTimer() {
  cudaEvent_t a = nullptr, b = nullptr;
  DS4_CUDA_CHECK(cudaEventCreate(&a));
  DS4_CUDA_CHECK(cudaEventCreate(&b));
  a_ = a;
  b_ = b;
}

EventTimer::~EventTimer() {
  cudaEventDestroy(static_cast<cudaEvent_t>(a_));
  cudaEventDestroy(static_cast<cudaEvent_t>(b_));
}

void EventTimer::start(void* stream) {
  DS4_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(a_), static_cast<cudaStream_t>(stream)));
}

void EventTimer::stop(void* stream) {
  DS4_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(b_), static_cast<cudaStream_t>(stream)));
}

float EventTimer::elapsed_ms() const {
  DS4_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(b_)));
  float ms = 0;
  DS4_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(a_), static_cast<cudaEvent_t>(b_)));
  return ms;
}

Graph::Graph(void* stream, const std::function<void(void* stream)>& record) {
  const auto s = static_cast<cudaStream_t>(stream);
  DS4_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  record(stream);
  cudaGraph_t g = nullptr;
  DS4_CUDA_CHECK(cudaStreamEndCapture(s, &g));
  graph_ = g;
  cudaGraphExec_t e = nullptr;
  DS4_CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
  exec_ = e;
}

Graph::~Graph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
}

void Graph::launch(void* stream) const {
  DS4_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), static_cast<cudaStream_t>(stream)));
}

void check_last_error(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("CUDA error after {}: {} ({})", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

void device_synchronize() { DS4_CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace ds4::cuda
