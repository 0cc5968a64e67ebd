// Shared by the unit tests: runs `fn` and expects an exception of type Exc whose message
// contains `needle`.
#pragma once

#include <gtest/gtest.h>

#include <exception>
#include <string>

namespace tpl::testing {

template <typename Exc, typename Fn>
void expect_throw_with(Fn&& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception containing '" << needle << "'";
  } catch (const Exc& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' lacks '" << needle << "'";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

}  // namespace tpl::testing
