//! alias-errors: a transform whose answer asks the host to copy far more than the plugin
//! holds. It returns its input batch with 1,024 row errors whose messages all point at one
//! 1 MiB string in its own memory: the canonical ABI lets a plugin alias memory, so 1 MiB
//! of the plugin's becomes 1 GiB of the host's if the host copies without a bound. weir
//! bounds what it copies out of one call by the plugin's memory cap (`tests/hostile.rs`).
//!
//! The exports are written by hand against the canonical ABI, because bindings whose
//! strings are owned values cannot alias one.

#[cfg(target_arch = "wasm32")]
#[allow(dead_code)]
mod component {
    // The component's type (the `transform` world) for the linker; the exports below.
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transform",
    });

    /// Row errors returned per call.
    const ERRORS: usize = 1024;
    /// The bytes of the one message they all point at.
    const MESSAGE: usize = 1 << 20;

    /// The return area of `result<transformed, string>`: the case (a byte, padded to 4),
    /// then `transformed`: `batch`, `source-rows` and `errors`, each a (pointer, length).
    #[repr(C, align(8))]
    struct ReturnArea([u32; 7]);

    static mut AREA: ReturnArea = ReturnArea([0; 7]);

    /// `init: func(config: string) -> result<_, string>`: always `ok`.
    #[unsafe(export_name = "init")]
    unsafe extern "C" fn init(_config: *mut u8, _length: usize) -> *mut u8 {
        let area = &raw mut AREA;
        // SAFETY: one thread; the host reads the area before the next call.
        unsafe { (*area).0 = [0; 7] };
        area.cast()
    }

    /// `transform: func(batch: list<u8>) -> result<transformed, string>`: the input as
    /// the output, plus the aliased errors (all for row 0).
    #[unsafe(export_name = "transform")]
    unsafe extern "C" fn transform(batch: *mut u8, length: usize) -> *mut u8 {
        let message: &'static mut [u8] = vec![b'A'; MESSAGE].leak();
        let mut errors: Vec<u32> = Vec::with_capacity(ERRORS * 3);
        for _ in 0..ERRORS {
            // row-error { row: u32, message: string }
            errors.extend([0, message.as_ptr() as u32, MESSAGE as u32]);
        }
        let errors = errors.leak();
        let area = &raw mut AREA;
        // SAFETY: as in `init`.
        unsafe {
            (*area).0 = [
                0,
                batch as u32,
                length as u32,
                4,
                0,
                errors.as_ptr() as u32,
                ERRORS as u32,
            ]
        };
        area.cast()
    }
}
