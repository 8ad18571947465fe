//! The terminal `top` draws on: the alternate screen, keys read one at a
//! time without echo, and the window's size. Plain ANSI and termios: a
//! full terminal library would be most of tracectl's size for four escapes.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// While alive: the alternate screen with the cursor hidden, and stdin
/// (when a terminal) in non-canonical mode without echo. Dropping it puts
/// the terminal back as it was, on every way out of `top`.
#[derive(Debug)]
pub struct Screen {
    saved: Option<libc::termios>,
}

impl Screen {
    pub fn enter() -> Self {
        let saved = std::io::stdin().is_terminal().then(raw_stdin).flatten();
        crate::out::write("\x1b[?1049h\x1b[?25l");
        Self { saved }
    }

    /// Clears the screen and draws `text`, cut to the window.
    pub fn draw(&self, text: &str) {
        let (rows, cols) = size();
        let mut s = String::from("\x1b[H\x1b[2J");
        for line in text.lines().take(rows) {
            s.push_str(&cut(line, cols));
            s.push_str("\r\n");
        }
        crate::out::write(&s);
    }

    /// Waits up to `timeout` for a key; None when none came.
    pub fn key(&self, timeout: Duration) -> Option<u8> {
        self.saved?;
        let fd = std::io::stdin().as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, its count 1.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return None;
        }
        let mut b = [0u8; 1];
        // SAFETY: reads at most one byte into `b`.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        (n == 1).then_some(b[0])
    }

    /// Whether keys can be read (stdin is a terminal).
    pub fn interactive(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restores the attributes read from this same fd.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, t) };
        }
        // Not through out::write: a closed stdout must not stop the restore.
        use std::io::Write;
        let mut o = std::io::stdout();
        let _ = o.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = o.flush();
    }
}

/// Non-canonical, no echo, no signals from keys (Ctrl-C arrives as a byte
/// and quits through Drop, which restores the terminal). The previous
/// attributes, to restore.
fn raw_stdin() -> Option<libc::termios> {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios for the duration of the call.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return None;
    }
    let saved = t;
    t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: `t` came from tcgetattr on this fd, with flags changed.
    (unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } == 0).then_some(saved)
}

/// The window's rows and columns (24x80 when it cannot be asked).
fn size() -> (usize, usize) {
    // SAFETY: a zeroed winsize is a valid out-parameter for TIOCGWINSZ.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    let ok = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (usize::from(ws.ws_row), usize::from(ws.ws_col))
    } else {
        (24, 80)
    }
}

/// At most `cols` display columns of `line`, escapes passed through.
fn cut(line: &str, cols: usize) -> String {
    use unicode_width::UnicodeWidthChar;
    let mut out = String::new();
    let mut used = 0;
    let mut escape = false;
    for ch in line.chars() {
        if escape || ch == '\x1b' {
            escape = ch != 'm';
            out.push(ch);
            continue;
        }
        let w = ch.width().unwrap_or(0);
        if used + w > cols {
            break;
        }
        used += w;
        out.push(ch);
    }
    out
}
