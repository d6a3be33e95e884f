// The labeling store: access, task allocation, validation of submissions, idempotence,
// durability across reopening, export in the trainers' format, and the agreement statistics.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cmath>
#include <fstream>
#include <set>

#include <sqlite3.h>

#include "data/datasets.h"
#include "feedback/label_server.h"
#include "feedback/label_store.h"
#include "test_util.h"

using namespace rlhf;
using rlhf::test::TempDir;

namespace {

using Tiers = std::vector<std::vector<int64_t>>;

// Expects `fn` to throw LabelError with `status`.
template <class F>
void expect_status(int status, F fn) {
  try {
    fn();
    ADD_FAILURE() << "no LabelError thrown";
  } catch (const LabelError& e) {
    EXPECT_EQ(e.status, status) << e.what();
  }
}

// A store with `n` prompts of 4 completions each, a shared token and one named labeler.
struct Fixture {
  TempDir dir;
  std::unique_ptr<LabelStore> store;
  std::vector<int64_t> prompts;
  explicit Fixture(int n = 3, int per_prompt = 1) {
    store = std::make_unique<LabelStore>(dir / "labels.sqlite");
    store->set_meta("shared_token", "shared-secret");
    store->set_meta("labelers_per_prompt", std::to_string(per_prompt));
    store->set_labeler("carol", "carols-token");
    for (int i = 0; i < n; ++i) {
      prompts.push_back(store->add_prompt("prompt " + std::to_string(i)));
      std::vector<std::string> cs;
      for (int j = 0; j < 4; ++j) cs.push_back("p" + std::to_string(i) + " completion " + std::to_string(j));
      store->add_completions(prompts.back(), cs);
    }
  }
};

// Runs `statement` on the database file through a connection of its own, as another process would.
void run_sql(const std::filesystem::path& db, const std::string& statement) {
  sqlite3* con = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &con), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(con, statement.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(con);
}

LabelSubmission ranking_of(const LabelTask& t, const std::string& who) {
  LabelSubmission s;
  s.prompt_id = t.prompt_id;
  s.labeler = who;
  for (int64_t id : t.completion_ids) s.ranking.push_back({id});
  return s;
}

}  // namespace

TEST(LabelAgreement, KendallTauBAndPairwiseAgreement) {
  const Tiers abc = {{1}, {2}, {3}}, cba = {{3}, {2}, {1}};
  EXPECT_DOUBLE_EQ(kendall_tau_b(abc, abc), 1.0);
  EXPECT_DOUBLE_EQ(kendall_tau_b(abc, cba), -1.0);
  EXPECT_DOUBLE_EQ(pairwise_agreement(abc, cba), 0.0);
  // One swapped pair of six: (5 - 1) / 6.
  EXPECT_NEAR(kendall_tau_b({{1}, {2}, {3}, {4}}, {{2}, {1}, {3}, {4}}), 4.0 / 6.0, 1e-12);
  int64_t pairs = 0;
  EXPECT_NEAR(pairwise_agreement({{1}, {2}, {3}, {4}}, {{2}, {1}, {3}, {4}}, &pairs), 5.0 / 6.0, 1e-12);
  EXPECT_EQ(pairs, 6);
  // Ties (tau-b): a ties 1 and 2; scipy.stats.kendalltau([1, 1, 2], [1, 2, 3]) = 2 / sqrt(6).
  EXPECT_NEAR(kendall_tau_b({{1, 2}, {3}}, {{1}, {2}, {3}}), 2.0 / std::sqrt(6.0), 1e-12);
  EXPECT_DOUBLE_EQ(pairwise_agreement({{1, 2}, {3}}, {{1}, {2}, {3}}, &pairs), 1.0);
  EXPECT_EQ(pairs, 2);
  EXPECT_TRUE(std::isnan(kendall_tau_b({{1, 2, 3}}, abc)));  // everything tied: undefined
}

TEST(LabelStore, SignInWithSharedOrOwnToken) {
  Fixture f;
  EXPECT_EQ(f.store->session_labeler(f.store->sign_in("ann", "shared-secret")), "ann");
  EXPECT_EQ(f.store->session_labeler(f.store->sign_in("carol", "carols-token")), "carol");
  expect_status(401, [&] { f.store->sign_in("ann", "wrong"); });
  expect_status(401, [&] { f.store->sign_in("carol", "shared-secret"); });  // a named labeler needs their own
  expect_status(400, [&] { f.store->sign_in("", "shared-secret"); });
  expect_status(401, [&] { f.store->session_labeler("not-a-session"); });
}

TEST(LabelStore, TaskIsStableUntilSubmittedAndShuffledPerLabeler) {
  Fixture f;
  auto t1 = f.store->next_task("ann");
  ASSERT_TRUE(t1);
  EXPECT_EQ(t1->prompt, "prompt 0");
  ASSERT_EQ(t1->completions.size(), 4u);
  // Asking again (a page reload) gives the same task in the same order.
  auto again = f.store->next_task("ann");
  EXPECT_EQ(again->prompt_id, t1->prompt_id);
  EXPECT_EQ(again->completion_ids, t1->completion_ids);
  for (size_t i = 0; i < 4; ++i)  // texts travel with their ids (prompt 0's completions are ids 1..4)
    EXPECT_EQ(t1->completions[i], "p0 completion " + std::to_string(t1->completion_ids[i] - 1));
  // Another labeler sees the same completions in another order (position bias averages out).
  Fixture g(1, 2);
  std::set<std::vector<int64_t>> orders;
  for (const char* who : {"ann", "bob", "cid", "dan"}) {
    g.store->set_meta("labelers_per_prompt", "10");
    orders.insert(g.store->next_task(who)->completion_ids);
  }
  EXPECT_GT(orders.size(), 1u);
  ASSERT_EQ(f.store->submit(ranking_of(*t1, "ann")), LabelStore::SubmitResult::stored);
  auto t2 = f.store->next_task("ann");
  ASSERT_TRUE(t2);
  EXPECT_NE(t2->prompt_id, t1->prompt_id);
}

TEST(LabelStore, EachPromptGoesToLabelersPerPromptLabelers) {
  Fixture f(/*n=*/2, /*per_prompt=*/2);
  auto a = f.store->next_task("ann"), b = f.store->next_task("bob"), c = f.store->next_task("cid");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->prompt_id, f.prompts[0]);
  EXPECT_EQ(b->prompt_id, f.prompts[0]);  // the second labeler of prompt 0
  EXPECT_EQ(c->prompt_id, f.prompts[1]);  // prompt 0 has its two (one pending, one pending)
  f.store->submit(ranking_of(*a, "ann"));
  auto a2 = f.store->next_task("ann");
  ASSERT_TRUE(a2);
  EXPECT_EQ(a2->prompt_id, f.prompts[1]);
  f.store->submit(ranking_of(*a2, "ann"));
  EXPECT_FALSE(f.store->next_task("ann"));  // ann has seen both prompts
  f.store->submit(ranking_of(*b, "bob"));
  f.store->submit(ranking_of(*c, "cid"));
  EXPECT_FALSE(f.store->next_task("dan"));  // every prompt has its two rankings
  const auto p = f.store->progress("ann");
  EXPECT_EQ(p.prompts, 2);
  EXPECT_EQ(p.submissions, 4);
  EXPECT_EQ(p.target, 4);
  EXPECT_EQ(p.done_prompts, 2);
  EXPECT_EQ(p.mine, 2);
}

TEST(LabelStore, SubmissionsAreValidatedBeforeAnythingIsWritten) {
  Fixture f;
  auto t = f.store->next_task("ann");
  ASSERT_TRUE(t);
  const auto ids = t->completion_ids;
  auto sub = ranking_of(*t, "ann");

  auto bad = sub;
  bad.prompt_id = 999;
  expect_status(404, [&] { f.store->submit(bad); });
  bad = sub;
  bad.prompt_id = f.prompts[2];  // exists, never shown to ann
  expect_status(409, [&] { f.store->submit(bad); });
  bad = sub;
  bad.ranking.pop_back();  // one missing
  expect_status(400, [&] { f.store->submit(bad); });
  bad = sub;
  bad.ranking.back() = {ids[0]};  // one twice
  expect_status(400, [&] { f.store->submit(bad); });
  bad = sub;
  bad.ranking.push_back({ids[0] + 100});  // one extra, from elsewhere
  expect_status(400, [&] { f.store->submit(bad); });
  bad = sub;
  bad.ranking = {{ids[0], ids[1], ids[2], ids[3]}};  // all tied
  expect_status(400, [&] { f.store->submit(bad); });
  bad = sub;
  bad.flags[ids[0]] = {"boring"};
  expect_status(400, [&] { f.store->submit(bad); });
  bad = sub;
  bad.note = std::string(5000, 'x');
  expect_status(400, [&] { f.store->submit(bad); });
  EXPECT_EQ(f.store->submission_count(), 0);

  // Ties and flags are fine; resubmitting the same ranking is idempotent, a different one is refused.
  sub.ranking = {{ids[2]}, {ids[0], ids[3]}, {ids[1]}};
  sub.flags[ids[1]] = {"toxic", "made_up_facts"};
  sub.note = "second one rambles";
  EXPECT_EQ(f.store->submit(sub), LabelStore::SubmitResult::stored);
  auto same = sub;
  same.ranking = {{ids[2]}, {ids[3], ids[0]}, {ids[1]}};  // tie written the other way round
  same.flags[ids[1]] = {"made_up_facts", "toxic"};
  EXPECT_EQ(f.store->submit(same), LabelStore::SubmitResult::duplicate);
  auto other = sub;
  other.ranking = {{ids[1]}, {ids[0], ids[3]}, {ids[2]}};
  expect_status(409, [&] { f.store->submit(other); });
  EXPECT_EQ(f.store->submission_count(), 1);
}

TEST(LabelStore, ExportsRankingsTheTrainersRead) {
  Fixture f(2);
  std::vector<std::vector<int64_t>> shown;
  for (int i = 0; i < 2; ++i) {
    auto t = f.store->next_task(i == 0 ? "ann" : "carol");
    ASSERT_TRUE(t);
    auto s = ranking_of(*t, i == 0 ? "ann" : "carol");
    const auto& ids = t->completion_ids;
    s.ranking = {{ids[3]}, {ids[1], ids[2]}, {ids[0]}};
    s.flags[ids[0]] = {"unhelpful"};
    if (i == 0) s.note = "a <b>note</b>";
    f.store->submit(s);
    shown.push_back(ids);
  }
  const auto out = f.dir / "rankings.jsonl";
  write_rankings(out, f.store->export_rankings());
  const auto rankings = read_rankings(out);
  ASSERT_EQ(rankings.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    const auto& rk = rankings[i];
    EXPECT_EQ(rk.prompt, "prompt " + std::to_string(i));
    EXPECT_EQ(rk.labeler, i == 0 ? "ann" : "carol");
    ASSERT_EQ(rk.completions.size(), 4u);
    // Completions in stored order: the text of index j is "pI completion J".
    for (int j = 0; j < 4; ++j) EXPECT_EQ(rk.completions[j], "p" + std::to_string(i) + " completion " + std::to_string(j));
    // The ranking maps the shown ids back to those indices.
    auto index = [&](int64_t id) { return static_cast<int>(id - *std::min_element(shown[i].begin(), shown[i].end())); };
    std::vector<std::vector<int>> want = {{index(shown[i][3])}, {index(shown[i][1]), index(shown[i][2])}, {index(shown[i][0])}};
    std::sort(want[1].begin(), want[1].end());
    EXPECT_EQ(rk.tiers, want);
    const auto& flags = rk.extra.at("flags");
    ASSERT_EQ(flags.size(), 4u);
    EXPECT_EQ(flags[index(shown[i][0])], nlohmann::json::array({"unhelpful"}));
    EXPECT_EQ(flags[index(shown[i][1])], nlohmann::json::array());
  }
  EXPECT_EQ(rankings[0].extra.at("note"), "a <b>note</b>");
  EXPECT_FALSE(rankings[1].extra.contains("note"));
  EXPECT_EQ(rankings_to_pairs(rankings).size(), 2u * (6 - 1));  // K-choose-2 minus the tied pair
}

TEST(LabelStore, SubmissionsSurviveReopeningAndStatsCompareLabelers) {
  TempDir dir;
  const auto path = dir / "labels.sqlite";
  std::vector<int64_t> ids;
  {
    LabelStore s(path);
    s.set_meta("labelers_per_prompt", "2");
    const auto p = s.add_prompt("shared prompt");
    s.add_completions(p, {"a", "b", "c"});
    auto ta = s.next_task("ann"), tb = s.next_task("bob");
    ASSERT_TRUE(ta && tb);
    ids = ta->completion_ids;
    std::sort(ids.begin(), ids.end());
    LabelSubmission a{p, "ann", {{ids[0]}, {ids[1]}, {ids[2]}}, {}, ""};
    LabelSubmission b{p, "bob", {{ids[1]}, {ids[0]}, {ids[2]}}, {}, ""};
    s.submit(a);
    s.submit(b);
  }
  LabelStore s(path);  // a new process would see the same
  EXPECT_EQ(s.submission_count(), 2);
  EXPECT_EQ(s.labelers_per_prompt(), 2);
  const auto st = s.stats();
  EXPECT_EQ(st.counts.at("ann"), 1);
  EXPECT_EQ(st.counts.at("bob"), 1);
  ASSERT_EQ(st.pairs.size(), 1u);
  EXPECT_EQ(st.pairs[0].shared_prompts, 1);
  EXPECT_NEAR(st.pairs[0].agreement, 2.0 / 3.0, 1e-12);  // they differ on one pair of three
  EXPECT_NEAR(st.pairs[0].kendall_tau, 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(st.agreement, 2.0 / 3.0, 1e-12);
}

TEST(LabelStore, RefusesFilesThatAreNotLabelingDatabases) {
  TempDir dir;
  const auto junk = dir / "junk.sqlite";
  std::ofstream(junk) << "this is not a database, just some text that is long enough to have a header........";
  try {
    LabelStore s(junk);
    FAIL() << "opened a text file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("junk.sqlite"), std::string::npos) << e.what();
  }
}

TEST(LabelStore, SessionsExpireAfterTheirLifetime) {
  Fixture f;
  const auto session = f.store->sign_in("ann", "shared-secret");
  EXPECT_EQ(f.store->session_labeler(session), "ann");
  EXPECT_DOUBLE_EQ(f.store->session_seconds(), 12 * 3600);  // the default
  run_sql(f.dir / "labels.sqlite", "UPDATE sessions SET created = created - 13 * 3600");  // signed in 13 h ago
  try {
    f.store->session_labeler(session);
    ADD_FAILURE() << "a 13 h old session was accepted";
  } catch (const LabelError& e) {
    EXPECT_EQ(e.status, 401);
    EXPECT_NE(std::string(e.what()).find("expired"), std::string::npos) << e.what();
  }
  f.store->set_meta("session_seconds", std::to_string(24 * 3600));  // a longer lifetime covers it again
  EXPECT_EQ(f.store->session_labeler(session), "ann");
}

TEST(LabelStore, SessionsEndWhenTheirTokenChangesOrTheLabelerIsRemoved) {
  Fixture f;
  const auto ann = f.store->sign_in("ann", "shared-secret"), carol = f.store->sign_in("carol", "carols-token");
  f.store->set_meta("shared_token", "new-shared-secret");
  expect_status(401, [&] { f.store->session_labeler(ann); });
  EXPECT_EQ(f.store->session_labeler(carol), "carol");  // her own token is unchanged
  f.store->set_labelers({{"dave", "daves-token"}});      // carol is no named labeler any more
  expect_status(401, [&] { f.store->session_labeler(carol); });
  expect_status(401, [&] { f.store->sign_in("carol", "carols-token"); });
  expect_status(401, [&] { f.store->sign_in("ann", "shared-secret"); });
  EXPECT_EQ(f.store->session_labeler(f.store->sign_in("ann", "new-shared-secret")), "ann");
  EXPECT_EQ(f.store->session_labeler(f.store->sign_in("dave", "daves-token")), "dave");
}

TEST(LabelStore, SessionsFromBeforeTokensWereRecordedAreDropped) {
  TempDir dir;
  const auto path = dir / "old.sqlite";
  // The first release's sessions table: no token to check a session against.
  run_sql(path,
          "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
          "INSERT INTO meta VALUES('schema_version', '1'), ('shared_token', 'shared-secret');"
          "CREATE TABLE sessions(id TEXT PRIMARY KEY, labeler TEXT NOT NULL, created REAL NOT NULL);"
          "INSERT INTO sessions VALUES('old-session', 'ann', 1e12);");
  LabelStore store(path);
  expect_status(401, [&] { store.session_labeler("old-session"); });
  EXPECT_EQ(store.session_labeler(store.sign_in("ann", "shared-secret")), "ann");
}

TEST(LabelServe, PortsOutsideZeroTo65535AreRefused) {
  TempDir dir;
  LabelStore store(dir / "labels.sqlite");
  LabelServeOptions opt;
  opt.token = "shared-secret";
  for (int64_t port : {int64_t{99999}, int64_t{-1}, int64_t{65536}, (int64_t{1} << 32) + 8080}) {
    opt.port = port;
    try {
      prepare_label_store(store, opt, {});
      ADD_FAILURE() << "port " << port << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(port)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("65535"), std::string::npos) << e.what();
    }
  }
  for (int64_t port : {0, 8080, 65535}) {
    opt.port = port;
    EXPECT_NO_THROW(prepare_label_store(store, opt, {}));
  }
  opt.session_hours = 0;
  EXPECT_THROW(prepare_label_store(store, opt, {}), Error);
}

// {"prompt_id": 1.5} used to be read as prompt 1 and stored; an id must be an integer as sent.
TEST(LabelServer, SubmitRefusesAPromptIdThatIsNotAnInteger) {
  Fixture f(1);
  LabelServer server(*f.store);
  httplib::Client http("127.0.0.1", server.start("127.0.0.1", 0));
  auto signin = http.Post("/api/signin", R"({"name": "ann", "token": "shared-secret"})", "application/json");
  ASSERT_TRUE(signin && signin->status == 200);
  const httplib::Headers auth = {{"Authorization", "Bearer " + nlohmann::json::parse(signin->body)["session"].get<std::string>()}};
  auto task = http.Get("/api/task", auth);
  ASSERT_TRUE(task && task->status == 200);
  const auto t = nlohmann::json::parse(task->body)["task"];
  nlohmann::json ranking = nlohmann::json::array();
  for (const auto& c : t["completions"]) ranking.push_back(c["id"]);
  const int64_t pid = t["prompt_id"];
  auto bad = http.Post("/api/submit", auth, nlohmann::json{{"prompt_id", pid + 0.5}, {"ranking", ranking}}.dump(),
                       "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400) << bad->body;
  EXPECT_NE(bad->body.find("prompt_id"), std::string::npos) << bad->body;
  EXPECT_EQ(f.store->submission_count(), 0);
  auto good = http.Post("/api/submit", auth, nlohmann::json{{"prompt_id", pid}, {"ranking", ranking}}.dump(),
                        "application/json");
  ASSERT_TRUE(good);
  EXPECT_EQ(good->status, 200) << good->body;
  EXPECT_EQ(f.store->submission_count(), 1);
  server.stop();
}
