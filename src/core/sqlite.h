// A thin layer over the SQLite C API shared by the stores that keep their data in one SQLite
// file (feedback/label_store, apps/rag): prepared statements, exec and transactions whose
// failures are Errors.
#pragma once
#include <sqlite3.h>

#include <cstdint>
#include <string>

#include "core/error.h"

namespace rlhf::sqlite {

// One prepared statement; binds by position (1-based), steps, reads columns, finalizes.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &s_, nullptr) != SQLITE_OK) throw Error(std::string("sqlite: ") + sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt& bind(int i, int64_t v) { return ok(sqlite3_bind_int64(s_, i, v)); }
  Stmt& bind(int i, double v) { return ok(sqlite3_bind_double(s_, i, v)); }
  Stmt& bind(int i, const void* blob, size_t bytes) {
    return ok(sqlite3_bind_blob(s_, i, blob, static_cast<int>(bytes), SQLITE_TRANSIENT));
  }
  Stmt& bind(int i, const std::string& v) {
    return ok(sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  // True while there is a row to read.
  bool step() {
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw Error(std::string("sqlite: ") + sqlite3_errmsg(db_));
  }
  int64_t i64(int col) { return sqlite3_column_int64(s_, col); }
  double f64(int col) { return sqlite3_column_double(s_, col); }
  bool null(int col) { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
  const void* blob(int col) { return sqlite3_column_blob(s_, col); }
  size_t bytes(int col) { return static_cast<size_t>(sqlite3_column_bytes(s_, col)); }
  void reset() {  // for the next bind and step
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  std::string text(int col) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, col))) : std::string();
  }

 private:
  Stmt& ok(int rc) {
    if (rc != SQLITE_OK) throw Error(std::string("sqlite: ") + sqlite3_errmsg(db_));
    return *this;
  }
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
};

inline void exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw Error("sqlite: " + msg);
  }
}

// BEGIN IMMEDIATE (takes the write lock up front, so no upgrade deadlock) ... COMMIT; rolls
// back when destroyed uncommitted (an exception on the way).
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) { exec(db_, "BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    exec(db_, "COMMIT");
    done_ = true;
  }

 private:
  sqlite3* db_;
  bool done_ = false;
};

}  // namespace rlhf::sqlite
