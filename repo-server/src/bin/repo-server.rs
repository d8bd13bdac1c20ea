//! `repo-server`: the backup repository's command line ([`repo_server::cli`]). Fail points are
//! never armed here (see [`repo_server::fail`]).

fn main() -> anyhow::Result<()> {
    repo_server::cli::main()
}
