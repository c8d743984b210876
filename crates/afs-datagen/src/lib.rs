//! Training data generation: turns the usage log into training files (built by the datagen issue).
