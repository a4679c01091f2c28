static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veg-ebpf"));
fn main() {
    let mut ebpf = aya::Ebpf::load(OBJ).unwrap();
    for (name, p) in ebpf.programs_mut() {
        let p: &mut aya::programs::SchedClassifier = p.try_into().unwrap();
        p.load().unwrap_or_else(|e| panic!("{name}: {e:?}"));
        println!("loaded {name}");
    }
}
