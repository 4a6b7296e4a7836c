import NIOCore

/// The streams of one connection. A connection has a handful, so a small array searched
/// linearly costs less memory than a dictionary and no hashing on the delivery path.
struct StreamCursors {
    private var cursors: ContiguousArray<StreamCursor> = []

    var count: Int { self.cursors.count }
    var names: [String] { self.cursors.map(\.stream) }

    /// The names of the streams whose cursor satisfies `predicate`.
    func names(where predicate: (StreamCursor) -> Bool) -> [String] {
        self.cursors.filter(predicate).map(\.stream)
    }

    /// How many subscribed streams' names satisfy `predicate`.
    func count(where predicate: (String) -> Bool) -> Int {
        self.cursors.reduce(0) { $0 + (predicate($1.stream) ? 1 : 0) }
    }

    func index(of stream: String) -> Int? {
        self.cursors.firstIndex { $0.stream == stream }
    }

    subscript(stream: String) -> StreamCursor? {
        get { self.index(of: stream).map { self.cursors[$0] } }
        set {
            switch (self.index(of: stream), newValue) {
            case (let i?, let cursor?): self.cursors[i] = cursor
            case (let i?, nil):
                self.cursors.swapAt(i, self.cursors.count - 1)
                self.cursors.removeLast()
            case (nil, let cursor?): self.cursors.append(cursor)
            case (nil, nil): break
            }
        }
    }

    /// In-place access to the cursor at `index` (from `index(of:)`).
    subscript(at index: Int) -> StreamCursor {
        get { self.cursors[index] }
        _modify { yield &self.cursors[index] }
    }

    @discardableResult
    mutating func remove(_ stream: String) -> StreamCursor? {
        let cursor = self[stream]
        self[stream] = nil
        return cursor
    }

    mutating func removeAll() { self.cursors = [] }
}
