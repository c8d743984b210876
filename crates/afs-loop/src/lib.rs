//! The continuous learning loop that wires store, datagen, triggers and experiments together (built by the loop issue).
