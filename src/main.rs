//! Entry point: parse the command line, run, print any error on one line.

#[global_allocator]
static ALLOC: jetkvm_metrics::allocator::WipingAlloc = jetkvm_metrics::allocator::WipingAlloc;

fn main() {
    std::process::exit(jetkvm_metrics::cli::main(std::env::args_os()));
}
