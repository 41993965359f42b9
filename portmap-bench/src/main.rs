fn main() -> std::process::ExitCode {
    portmap_bench::main()
}
