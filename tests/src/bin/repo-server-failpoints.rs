//! `repo-server-failpoints`: the `repo-server` program with one fail point armed from the
//! environment, `REPO_FAILPOINT=NAME[:N]` (see `repo_server::fail`): the `N`th time the server
//! passes `NAME` it aborts. The crash tests run this binary; the shipped `repo-server` never arms
//! a point, whatever its environment.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var("REPO_FAILPOINT") {
        repo_server::fail::arm(&spec).context("REPO_FAILPOINT")?;
    }
    repo_server::cli::main()
}
