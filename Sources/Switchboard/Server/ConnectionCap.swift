#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import HummingbirdCore

/// Stops accepting while the node holds `maximum` connections; they wait in the listen backlog
/// until one closes. The default maximum stays below the process's open-file limit: an accept
/// that fails with EMFILE leaves SwiftNIO's listener readable with a read still pending, so it
/// would retry at once, forever (a core spinning until sockets close), and its accept back-off
/// never engages. Not running out is the only reliable back-off.
struct ConnectionCap: AvailableConnectionsDelegate {
    let maximum: Int
    let metrics: GatewayMetrics
    private var open = 0

    init(maximum: Int, metrics: GatewayMetrics) {
        self.maximum = maximum
        self.metrics = metrics
    }

    mutating func connectionOpened() {
        self.open += 1
        // The listener pauses from here until a connection closes.
        if self.open == self.maximum { self.metrics.acceptBackoffs.increment() }
    }

    mutating func connectionClosed() {
        self.open -= 1
    }

    func isAcceptingNewConnections() -> Bool {
        self.open < self.maximum
    }

    /// Connections a node may hold by default: the open-file limit less what the process needs
    /// for everything else (engine connections, files, the listener): a tenth of it, between
    /// 32 and 1024 descriptors.
    static func defaultMaximum() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return 1 << 20 }
        let files = Int(clamping: limit.rlim_cur)
        let reserve = min(1024, max(32, files / 10))
        return max(1, files - reserve)
    }
}
