// The stamping logic is shared by every binary of the workspace.
include!("../packaging/version_stamp.rs");

fn main() {
    stamp_version();
}
