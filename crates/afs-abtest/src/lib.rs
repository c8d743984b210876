//! Champion/challenger experiments: model versions, routing and sound statistics (built by the abtest issue).
