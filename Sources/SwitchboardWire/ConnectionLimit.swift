import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How many connections a server (a gateway node, the reconnecting proxy) holds by default: the
/// open-file limit less what the process needs for everything else (engine or upstream
/// connections, files, the listener): a tenth of it, between 32 and 1,024 descriptors.
///
/// Why a limit at all: an accept that fails with EMFILE leaves SwiftNIO's listener readable
/// with its read still pending, so it retries at once, forever (a core spinning until sockets
/// close), and its accept back-off never engages. A server that closes connections past its
/// limit as they arrive never runs out of descriptors, and accepting costs what the arrivals
/// cost, no more.
public final class ConnectionLimit: Sendable {
    public let maximum: Int
    private let held = NIOLockedValueBox(0)

    /// `maximum` connections at once; nil: `defaultMaximum()`.
    public init(maximum: Int? = nil) {
        self.maximum = maximum ?? Self.defaultMaximum()
    }

    /// Counts an accepted connection in; false when `maximum` are held already (the caller
    /// closes it). Every `true` is matched by one `ended()`.
    public func accepted() -> Bool {
        self.held.withLockedValue { n in
            guard n < self.maximum else { return false }
            n += 1
            return true
        }
    }

    public func ended() {
        self.held.withLockedValue { $0 -= 1 }
    }

    public static func defaultMaximum() -> Int {
        var limit = rlimit()
        #if canImport(Glibc)
        let resource = Int32(RLIMIT_NOFILE.rawValue)
        #else
        let resource = RLIMIT_NOFILE
        #endif
        // Unlimited (RLIM_INFINITY: UInt64.max on Linux, Int64.max on Darwin) or unknown.
        guard getrlimit(resource, &limit) == 0, limit.rlim_cur < 1 << 40 else { return 1 << 20 }
        let files = Int(clamping: limit.rlim_cur)
        let reserve = min(1024, max(32, files / 10))
        return max(1, files - reserve)
    }
}
