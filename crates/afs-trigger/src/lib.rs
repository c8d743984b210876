//! Retraining triggers and the retrainer: decides when to retrain and runs one retrain (built by the trigger issue).
