#include <fmt/format.h>

#include <chrono>

#include "dedup/config.hpp"
#include "internal.hpp"

namespace dedup::pg {

FailureKind classify_sqlstate(std::string_view sqlstate) noexcept {
  if (sqlstate.size() != 5) return FailureKind::transient;  // no SQLSTATE: lost connection
  const auto cls = sqlstate.substr(0, 2);
  // Exact codes first, where a class mixes faults.
  if (sqlstate == "55P03" || sqlstate == "55006") return FailureKind::transient;  // lock, in use
  if (sqlstate == "42501" || sqlstate == "42P01" || sqlstate == "42883" || sqlstate == "42P02") {
    return FailureKind::configuration;  // no privilege, table or function gone, bad parameter
  }
  // The infrastructure, for now: connection (08), rollback (40: serialization, deadlock),
  // resources (53), operator intervention (57: statement/lock timeout, shutdown), system (58),
  // snapshot too old (72), a foreign server (HV).
  for (const std::string_view transient : {"08", "40", "53", "57", "58", "72", "HV"}) {
    if (cls == transient) return FailureKind::transient;
  }
  // The deployment or the worker itself: invalid transaction initiation (0B), grantor (0L),
  // role (0P), cursor (24, 34), transaction state (25, 2D, 3B), statement name (26),
  // authorization (28), catalog (3D), schema (3F), object state (55), config file (F0),
  // internal error and corruption (XX), statement not complete (03).
  for (const std::string_view configuration :
       {"03", "0B", "0L", "0P", "24", "25", "26", "28", "2D", "34", "3B", "3D", "3F", "55", "F0",
        "XX"}) {
    if (cls == configuration) return FailureKind::configuration;
  }
  // Everything else is about the values written: data (22), constraints (23, 27, 44),
  // cardinality (21), syntax or access rules hit by the payload's columns (42: an unknown or
  // generated column, a type mismatch), limits (54: index row too big), features (0A), triggers
  // and routines (09, 2F, 38, 39, P0), and codes of the user's own triggers.
  return FailureKind::record;
}

bool may_be_records(std::string_view sqlstate) noexcept {
  return classify_sqlstate(sqlstate) != FailureKind::transient;
}

std::string sqlstate_of(const pqxx::sql_error& e) {
  if (!e.sqlstate().empty()) return e.sqlstate();
  if (dynamic_cast<const pqxx::insufficient_privilege*>(&e) != nullptr) return "42501";
  return {};
}

void rethrow_classified(std::string_view context) {
  try {
    throw;
  } catch (const DatabaseError&) {
    throw;
  } catch (const pqxx::in_doubt_error& e) {
    throw TransientDatabaseError(fmt::format("{}: commit in doubt: {}", context, e.what()), "");
  } catch (const pqxx::broken_connection& e) {
    throw TransientDatabaseError(fmt::format("{}: connection lost: {}", context, e.what()), "08006");
  } catch (const pqxx::sql_error& e) {
    const std::string state = sqlstate_of(e);
    const auto message = fmt::format("{}: {} (SQLSTATE {})", context, e.what(), state);
    if (classify_sqlstate(state) == FailureKind::transient) {
      throw TransientDatabaseError(message, state);
    }
    throw PermanentDatabaseError(message, state);
  } catch (const pqxx::usage_error& e) {
    throw PermanentDatabaseError(fmt::format("{}: {}", context, e.what()), "");
  } catch (const pqxx::failure& e) {
    // Other libpqxx failures happen on the wire (e.g. a server that vanished mid-result).
    throw TransientDatabaseError(fmt::format("{}: {}", context, e.what()), "");
  }
}

std::string to_pg_timestamp(Timestamp t) {
  using namespace std::chrono;
  const auto day = floor<days>(t);
  const year_month_day ymd{day};
  const hh_mm_ss time{t - day};
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00", static_cast<int>(ymd.year()),
                     static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                     time.hours().count(), time.minutes().count(), time.seconds().count(),
                     time.subseconds().count());
}

}  // namespace dedup::pg
