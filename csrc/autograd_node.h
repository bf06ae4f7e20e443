// A new autograd node of type T, for the nodes written out by hand
// (lstm_autograd.cpp explains why not torch::autograd::Function): torch 2.11
// holds nodes by std::shared_ptr, later versions by c10::intrusive_ptr
// (Node::getptr() returns the one in use).
#pragma once

#include <torch/autograd.h>

#include <memory>
#include <type_traits>
#include <utility>

namespace lstm_ext {

template <typename T>
auto make_node() {
  using NodePtr = decltype(std::declval<torch::autograd::Node&>().getptr());
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>();
  } else {
    return c10::make_intrusive<T>();
  }
}

}  // namespace lstm_ext
