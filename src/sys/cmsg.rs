//! The one walk over the control messages the kernel attached to a received header.

/// Calls `f` with each control message in `hdr`'s control buffer, in order: its header
/// and a pointer to its data (`CMSG_DATA`).
///
/// # Safety
///
/// `hdr` must describe a control buffer into which the kernel wrote `msg_controllen` bytes
/// of well-formed control messages (or `msg_controllen` must be 0), and that buffer must
/// outlive the call.
pub(super) unsafe fn for_each(hdr: &libc::msghdr, mut f: impl FnMut(&libc::cmsghdr, *const u8)) {
    if hdr.msg_controllen == 0 {
        return;
    }
    // SAFETY: by the caller's promise CMSG_FIRSTHDR and CMSG_NXTHDR stay inside the
    // buffer's written length, and each non-null result points at a whole header.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !cmsg.is_null() {
        // SAFETY: as above; CMSG_DATA points just past the header, inside the message.
        unsafe {
            f(&*cmsg, libc::CMSG_DATA(cmsg));
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
}
