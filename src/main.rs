//! Entry point: parse the command line, run, print any error on one line.

fn main() {
    std::process::exit(jetkvm_metrics::cli::main(std::env::args_os()));
}
