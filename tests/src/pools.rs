//! The gateway's database pools opened in-process, for suites that call its storage code
//! directly rather than over HTTP.

use std::str::FromStr;

use aihummer_gateway::config::DbTarget;
use aihummer_gateway::database;
use aihummer_gateway::state::{Pools, Shared};
use sqlx::postgres::PgConnectOptions;

use crate::TestDb;

/// Starts the gateway's pools on `db` serving through `login`, as startup does: migrations
/// applied, the app login's roles checked.
pub async fn pools_as(db: &TestDb, login: &str) -> Pools {
    let owner = DbTarget {
        options: PgConnectOptions::from_str(&db.url()).expect("url"),
    };
    let app = DbTarget {
        options: PgConnectOptions::from_str(&db.url_as(login)).expect("url"),
    };
    let (_leadership, leading) = tokio::sync::watch::channel(false);
    let shared = Shared::new(true, leading);
    database::start(&owner, Some(&app), None, &shared)
        .await
        .expect("startup")
}
