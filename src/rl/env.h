// An episodic environment with discrete actions, the interface env_ppo.h trains a policy on:
// the agent sees an observation, picks one of num_actions() actions (those legal now), and gets
// a reward, until the episode is done. A two-player game becomes one by letting a fixed
// opponent answer inside step() (tictactoe.h's TicTacToeEnv).
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace rlhf {

struct StepResult {
  double reward = 0;  // for the action just taken (a game's result comes with the move that ends it)
  bool done = false;  // the episode is over: reset() before the next step
};

class Env {
 public:
  virtual ~Env() = default;
  virtual int64_t observation_size() const = 0;  // O
  virtual int64_t num_actions() const = 0;       // A
  // A new episode; its first observation is ready after this.
  virtual void reset() = 0;
  virtual torch::Tensor observation() const = 0;    // (O) float32, what the agent sees now
  virtual torch::Tensor legal_actions() const = 0;  // (A) bool, at least one true while not done
  // Takes `action`; an illegal one, or a step after the episode ended, is an Error.
  virtual StepResult step(int64_t action) = 0;
};

}  // namespace rlhf
