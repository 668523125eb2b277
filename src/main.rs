//! The `relogin-farm` binary: the command line lives in [`cli`]; everything
//! else in the library.

mod cli;

/// A lease is allocated by its request and freed by whichever worker leads
/// its batch's commit; glibc's allocator pays for such cross-thread frees
/// and mimalloc does not (`scripts/bench` compares). Built with `no_thp`:
/// otherwise mimalloc asks for transparent huge pages, which raises the
/// resident memory of an idle farm (`scripts/bench-memory`) for no speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    cli::main()
}
