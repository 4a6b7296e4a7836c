/// The messages of one stream, in offset order, each exactly once.
///
/// Messages are buffered until consumed. One consumer per stream.
public struct ClientSubscription: AsyncSequence, Sendable {
    public typealias Element = ClientMessage
    public typealias AsyncIterator = AsyncStream<ClientMessage>.AsyncIterator

    public let stream: String
    let messages: AsyncStream<ClientMessage>
    let client: SwitchboardClient

    public func makeAsyncIterator() -> AsyncStream<ClientMessage>.AsyncIterator {
        self.messages.makeAsyncIterator()
    }

    /// Unsubscribes (UNSUB) and ends the sequence.
    public func cancel() async {
        self.client.unsubscribe(self.stream)
    }
}
