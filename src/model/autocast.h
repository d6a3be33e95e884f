// Mixed precision through libtorch's autocast, as torch.autocast does it: inside an Autocast
// scope the matrix products of one device type (linear, matmul, attention) run in bf16 on bf16
// copies of the float32 weights, and the gradients flow back to the float32 weights through
// those casts, so master weights and optimizer state stay float32.
#pragma once
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

namespace rlhf {

// One device type's autocast setting on this thread (it is thread-local, as in PyTorch).
struct AutocastState {
  c10::DeviceType device = c10::DeviceType::CPU;
  bool enabled = false;
  at::ScalarType dtype = at::kBFloat16;

  static AutocastState current(c10::DeviceType device) {
    return {device, at::autocast::is_autocast_enabled(device), at::autocast::get_autocast_dtype(device)};
  }
};

// Sets a device type's autocast for a scope and restores the previous setting on exit. As
// torch.autocast does, the cache of cast weights is cleared when the outermost scope ends, so
// no later step reuses bf16 copies of weights that the optimizer has changed since.
class Autocast {
 public:
  explicit Autocast(const AutocastState& s) : previous_(AutocastState::current(s.device)) {
    at::autocast::set_autocast_enabled(s.device, s.enabled);
    at::autocast::set_autocast_dtype(s.device, s.dtype);
    at::autocast::increment_nesting();
  }
  Autocast(torch::Device device, bool enabled, at::ScalarType dtype = at::kBFloat16)
      : Autocast(AutocastState{device.type(), enabled, dtype}) {}
  ~Autocast() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(previous_.device, previous_.enabled);
    at::autocast::set_autocast_dtype(previous_.device, previous_.dtype);
  }
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  AutocastState previous_;
};

}  // namespace rlhf
