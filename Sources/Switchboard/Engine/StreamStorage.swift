import SwitchboardWire

/// How much of a stream the engine keeps, and what trims it (set by the stream's rule).
public struct StreamStorage: Sendable, Equatable {
    /// What consumers' acks do to history.
    public enum Retention: String, Sendable, CaseIterable {
        /// Trimmed once every subscribed session acked (a queue of undelivered messages).
        case queue
        /// Acks never trim: size and age alone do, so a late joiner can read history (a chat room).
        case log
    }

    /// Messages kept; nil: the engine's default. 0 is an ephemeral stream: offsets still count,
    /// so a reader sees a gap, but nothing is replayed.
    public var historySize: Int?
    /// Seconds a message is kept; nil: the engine's default.
    public var historyAge: Double?
    public var retention: Retention

    public init(historySize: Int? = nil, historyAge: Double? = nil, retention: Retention = .queue) {
        self.historySize = historySize
        self.historyAge = historyAge
        self.retention = retention
    }

    /// The engine's defaults, trimmed by acks: what every stream had before rules.
    public static let standard = StreamStorage()
    /// Nothing kept (offsets still count).
    public static let ephemeral = StreamStorage(historySize: 0)

    /// Whether acks of `stream` trim its history.
    public func trimsByAcks(_ stream: String) -> Bool {
        self.retention == .queue && BuiltinStream.isTrimmedByAcks(stream)
    }
}

/// Chooses the storage of each stream by name: the gateway hands its stream rules to the engine
/// with `StreamStore.useStorage(_:)`.
public struct StreamStoragePolicy: Sendable {
    let choose: @Sendable (String) -> StreamStorage

    public init(_ choose: @escaping @Sendable (String) -> StreamStorage) { self.choose = choose }

    public func storage(of stream: String) -> StreamStorage { self.choose(stream) }

    /// Every stream on the engine's defaults.
    public static let standard = StreamStoragePolicy { _ in .standard }
}
