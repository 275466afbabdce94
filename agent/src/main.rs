fn main() {
    println!("{}", carbon_agent::probes::EBPF_OBJECT.len());
}
