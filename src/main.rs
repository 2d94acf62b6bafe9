fn main() {
    println!("vpnfw");
}
